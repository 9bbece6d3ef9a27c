"""QCFS fine-tuning (quantization-aware training) of an ONNX ReLU network.

Steps: :func:`onnx_rmpe.conversion.build_qcfs` turns the ReLU ANN into the post-training
QCFS ANN (thresholds ``lam`` = a high percentile of each layer's positive
pre-activations on the training data), :class:`onnx_rmpe.torch.OnnxModule` makes it
trainable, and :func:`onnx_rmpe.torch.training.fit` trains weights and every ``lam``
(straight-through floor) with the recipe of :class:`onnx_rmpe.recipe.Recipe`: by default
SGD with momentum 0.9, lr 0.01 decayed by a cosine to 0, batch 128. The loss is the
cross-entropy on the labels, the distillation loss against the input network's logits
(the teacher, run in onnxruntime), or a mix; data without labels is fine-tuned by pure
distillation. The trained values are written back into the same ONNX graph: a QCFS model
that :func:`onnx_rmpe.conversion.convert` turns into an SNN without recalibrating ``lam``.

Deterministic for a given ``seed`` on CPU (seeded torch, seeded shuffling, deterministic
algorithms while training).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_rmpe.data import Dataset, check_fits, load_data
from onnx_rmpe.errors import MissingDependencyError, OptionError
from onnx_rmpe.modelio import neuron_attributes, set_metadata
from onnx_rmpe.recipe import DEFAULT_EPOCHS, DEFAULT_LEVELS, Recipe, check_augmentable
from onnx_rmpe.runtime.neurons import QCFS_OP

logger = logging.getLogger(__name__)

CALIB_SAMPLES = 1024
#: distillation weight when the data has labels (0, 0.5 and 1 measured within 0.3 point of
#: each other on the ground-truth net: benchmarks/finetune_fashion.py)
DEFAULT_DISTILL = 0.0


@dataclass
class EpochStats:
    epoch: int
    loss: float
    val_accuracy: float | None
    seconds: float


@dataclass
class FinetuneResult:
    """The fine-tuned QCFS model, its thresholds and the per-epoch history.

    ``initial_val_accuracy`` is the post-training QCFS accuracy (before any epoch);
    ``distill`` the weight of the distillation loss that was used (1: no labels used).
    """

    model: onnx.ModelProto
    levels: int
    thresholds: dict[str, float]
    initial_thresholds: dict[str, float]
    initial_val_accuracy: float | None
    history: list[EpochStats] = field(default_factory=list)
    distill: float = 0.0

    @property
    def val_accuracy(self) -> float | None:
        return self.history[-1].val_accuracy if self.history else self.initial_val_accuracy


def finetune(model: str | os.PathLike | onnx.ModelProto, data, *, levels: int = DEFAULT_LEVELS,
             epochs: int = DEFAULT_EPOCHS, optimizer: str = "sgd", lr: float | None = None,
             momentum: float = 0.9, weight_decay: float = 0.0, schedule: str = "cosine",
             batch_size: int = 128, distill: float | None = None, temperature: float = 1.0,
             augment: bool = False, val=None, percentile: float = 99.9, seed: int = 0,
             maxpool_to_avgpool: bool = False, progress: bool = True) -> FinetuneResult:
    """Fine-tune the QCFS version of an ONNX ReLU (or QCFS) classifier.

    ``data``: anything :func:`onnx_rmpe.data.load_data` takes; labels ``y`` are optional.
    ``distill`` is the weight of the distillation loss (see
    :mod:`onnx_rmpe.torch.training`): ``None`` picks :data:`DEFAULT_DISTILL` when the data
    has labels and 1 (pure distillation from the input model's logits) when it has none.
    ``optimizer`` (``sgd``/``adam``), ``lr`` (``None``: 0.01 for SGD, 1e-3 for Adam),
    ``momentum`` (SGD), ``weight_decay``, ``schedule`` (``cosine``/``onecycle``/
    ``constant``, per step), ``temperature`` and ``augment`` (random shifts of up to 2
    pixels) set the recipe. ``val`` (labelled) gives the held-out accuracy per epoch
    (None: not measured). ``maxpool_to_avgpool`` replaces max pools by average pools
    before fine-tuning (the converter handles max pools exactly, so this is off by default).
    """
    recipe = Recipe(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, batch_size=batch_size, distill=distill,
                    temperature=temperature, augment=augment)
    _check_options(levels, epochs, percentile)
    recipe.check()
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch", "fine-tuning") from None
    from onnx_rmpe.modelio import read_model
    from onnx_rmpe.pipeline import build_qcfs
    from onnx_rmpe.torch.interpreter import OnnxModule

    proto, source = read_model(model)
    teacher_proto = proto
    if maxpool_to_avgpool:
        proto = maxpool_as_avgpool(proto)
    train = load_data(data)
    check_augmentable(recipe, train.x)
    weight = distill_weight(recipe.distill, train)
    held = load_data(val, require_labels=True) if val is not None else None
    rng = np.random.default_rng(seed)
    calib = Dataset(train.x[rng.permutation(len(train))[:CALIB_SAMPLES]], None, train.source)
    qcfs, initial = build_qcfs(proto, calib, levels=levels, percentile=percentile, source=source)
    for ds in (train, held) if held is not None else (train,):
        check_fits(ds, qcfs)
    levels = int(neuron_attributes(qcfs, QCFS_OP).get("levels", levels))  # a QCFS input keeps its L
    teacher = _teacher(teacher_proto, torch.get_num_threads()) if weight > 0 else None
    with _deterministic(torch, seed):
        net = OnnxModule(qcfs)
        result = FinetuneResult(qcfs, levels, dict(initial), dict(initial),
                                _accuracy(torch, net, held, batch_size), distill=weight)
        _train(torch, net, train, held, result, recipe=recipe, distill=weight,
               teacher=teacher, epochs=epochs, seed=seed, progress=progress)
    result.model = net.to_onnx()
    result.thresholds = net.thresholds()
    meta = {"epochs": epochs, "optimizer": optimizer, "lr": recipe.learning_rate,
            "schedule": schedule, "batch_size": batch_size, "distill": weight,
            "augment": augment, "seed": seed}
    for key, value in meta.items():
        set_metadata(result.model, f"onnx_rmpe.finetune.{key}", str(value))
    logger.info("fine-tuned %s: L=%d, %d epoch(s), %s, accuracy %s -> %s", source, levels,
                epochs, describe_loss(weight), _pct(result.initial_val_accuracy),
                _pct(result.val_accuracy))
    return result


def distill_weight(distill: float | None, train: Dataset) -> float:
    """The distillation weight to use: labels decide the default; none forces 1."""
    if train.y is None:
        if distill is not None and distill < 1:
            raise OptionError("distill", f"the data '{train.source}' has no labels 'y', so "
                              f"fine-tuning can only distil (weight 1), not {distill}; add "
                              "labels 'y' or leave --distill out")
        logger.info("no labels in '%s': distilling from the input network's logits",
                    train.source)
        return 1.0
    return DEFAULT_DISTILL if distill is None else float(distill)


def describe_loss(weight: float) -> str:
    """``cross-entropy``, ``distillation`` or the mix, for logs and the CLI."""
    if weight >= 1:
        return "distillation from the input network's logits (no labels used)"
    if weight <= 0:
        return "cross-entropy on the labels"
    return f"{1 - weight:g} x cross-entropy + {weight:g} x distillation"


def _teacher(proto: onnx.ModelProto, threads: int):
    """Logits of the input model (its first output) in onnxruntime, batch by batch."""
    from onnx_rmpe.runtime.session import make_session

    session = make_session(proto, threads=threads)
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    return lambda x: session.run([output], {name: x})[0].astype(np.float32, copy=False)


def _train(torch, net, train: Dataset, held: Dataset | None, result: FinetuneResult, *,
           recipe: Recipe, distill: float, teacher, epochs: int, seed: int,
           progress: bool) -> None:
    from onnx_rmpe.torch.training import fit

    steps = -(-len(train) // recipe.batch_size)
    with _progress(progress) as bar:
        task = bar.add_task("fine-tuning", total=epochs * steps, status="") if bar else None

        def on_epoch(epoch: int, loss: float, seconds: float) -> None:
            acc = _accuracy(torch, net, held, recipe.batch_size)
            result.history.append(EpochStats(epoch, loss, acc, seconds))
            logger.info("epoch %d/%d: loss %.4f, held-out accuracy %s, %.1fs", epoch, epochs,
                        loss, _pct(acc), seconds)
            if bar:
                bar.update(task, status=f"epoch {epoch}: loss {loss:.4f}, "
                                        f"held-out acc {_pct(acc)}")

        fit(net, train.x, train.y, recipe=recipe, distill=distill, teacher=teacher,
            epochs=epochs, seed=seed, on_epoch=on_epoch,
            on_step=(lambda: bar.update(task, advance=1)) if bar else None)


def _accuracy(torch, net, data: Dataset | None, batch_size: int) -> float | None:
    if data is None:
        return None
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data), max(batch_size, 256)):
            logits = net(torch.from_numpy(data.x[i:i + max(batch_size, 256)]))
            correct += int((logits.argmax(-1).numpy() == data.y[i:i + max(batch_size, 256)]).sum())
    return correct / len(data)


def maxpool_as_avgpool(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with MaxPool -> AveragePool (pads not counted), GlobalMaxPool -> GlobalAveragePool."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    changed = 0
    for node in out.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "GlobalMaxPool":
            node.op_type, changed = "GlobalAveragePool", changed + 1
        elif node.op_type == "MaxPool":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if any(d != 1 for d in attrs.get("dilations", [])) or len(node.output) > 1:
                raise OptionError("maxpool_to_avgpool", f"MaxPool node '{node.name}' has "
                                  "dilations or an Indices output; it cannot become AveragePool")
            keep = [a for a in node.attribute if a.name not in ("dilations", "storage_order")]
            del node.attribute[:]
            node.attribute.extend(keep)
            node.op_type, changed = "AveragePool", changed + 1
    logger.info("replaced %d max pool(s) by average pools", changed)
    return out


def _check_options(levels: int, epochs: int, percentile: float) -> None:
    if levels < 1:
        raise OptionError("levels", f"must be at least 1, got {levels}")
    if epochs < 0:
        raise OptionError("epochs", f"must be at least 0, got {epochs}")
    if not 0 < percentile <= 100:
        raise OptionError("percentile", f"must be in (0, 100], got {percentile}")


@contextlib.contextmanager
def _deterministic(torch, seed: int):
    was = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


@contextlib.contextmanager
def _progress(enabled: bool):
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[status]}")) as bar:
        yield bar


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


__all__ = ["DEFAULT_DISTILL", "EpochStats", "FinetuneResult", "describe_loss", "distill_weight",
           "finetune", "maxpool_as_avgpool"]
