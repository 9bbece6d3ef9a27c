"""QCFS fine-tuning (quantization-aware training) of an ONNX ReLU network.

Steps: :func:`onnx_rmpe.convert.build_qcfs` turns the ReLU ANN into the post-training
QCFS ANN (thresholds ``lam`` = a high percentile of each layer's positive
pre-activations on the training data), :class:`onnx_rmpe.torch.OnnxModule` makes it
trainable, Adam minimises the cross-entropy with a straight-through floor (weights and
every ``lam`` train), and the trained values are written back into the same ONNX graph.
The result is a QCFS model that :func:`onnx_rmpe.convert.convert` turns into an SNN
without recalibrating its thresholds.

Deterministic for a given ``seed`` on CPU (seeded torch, seeded shuffling, deterministic
algorithms while training).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_rmpe.data import Dataset, check_fits, load_data
from onnx_rmpe.errors import MissingDependencyError, OptionError
from onnx_rmpe.modelio import neuron_attributes, set_metadata
from onnx_rmpe.runtime.neurons import QCFS_OP

logger = logging.getLogger(__name__)

CALIB_SAMPLES = 1024


@dataclass
class EpochStats:
    epoch: int
    loss: float
    val_accuracy: float | None
    seconds: float


@dataclass
class FinetuneResult:
    """The fine-tuned QCFS model, its thresholds and the per-epoch history.

    ``initial_val_accuracy`` is the post-training QCFS accuracy (before any epoch).
    """

    model: onnx.ModelProto
    levels: int
    thresholds: dict[str, float]
    initial_thresholds: dict[str, float]
    initial_val_accuracy: float | None
    history: list[EpochStats] = field(default_factory=list)

    @property
    def val_accuracy(self) -> float | None:
        return self.history[-1].val_accuracy if self.history else self.initial_val_accuracy


def finetune(model: str | os.PathLike | onnx.ModelProto, data, *, levels: int = 4,
             epochs: int = 3, lr: float = 1e-3, batch_size: int = 64, val=None,
             percentile: float = 99.9, seed: int = 0, maxpool_to_avgpool: bool = False,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune the QCFS version of an ONNX ReLU (or QCFS) classifier.

    ``data`` and ``val``: anything :func:`onnx_rmpe.data.load_data` takes, with labels
    ``y``. ``val`` gives the held-out accuracy per epoch (None: not measured).
    ``maxpool_to_avgpool`` replaces max pools by average pools before fine-tuning (the
    converter handles max pools exactly, so this is off by default).
    """
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch", "fine-tuning") from None
    from onnx_rmpe.convert import build_qcfs
    from onnx_rmpe.modelio import read_model
    from onnx_rmpe.torch.interpreter import OnnxModule

    _check_options(levels, epochs, lr, batch_size)
    proto, source = read_model(model)
    if maxpool_to_avgpool:
        proto = maxpool_as_avgpool(proto)
    train = load_data(data, require_labels=True)
    held = load_data(val, require_labels=True) if val is not None else None
    rng = np.random.default_rng(seed)
    calib = Dataset(train.x[rng.permutation(len(train))[:CALIB_SAMPLES]], None, train.source)
    qcfs, initial = build_qcfs(proto, calib, levels=levels, percentile=percentile, source=source)
    for ds in (train, held) if held is not None else (train,):
        check_fits(ds, qcfs)
    levels = int(neuron_attributes(qcfs, QCFS_OP).get("levels", levels))  # a QCFS input keeps its L
    with _deterministic(torch, seed):
        net = OnnxModule(qcfs)
        result = FinetuneResult(qcfs, levels, dict(initial), dict(initial),
                                _accuracy(torch, net, held, batch_size))
        _train(torch, net, train, held, result, epochs=epochs, lr=lr, batch_size=batch_size,
               seed=seed, progress=progress)
    result.model = net.to_onnx()
    result.thresholds = net.thresholds()
    for key, value in {"onnx_rmpe.finetune.epochs": str(epochs), "onnx_rmpe.finetune.lr": str(lr),
                       "onnx_rmpe.finetune.seed": str(seed)}.items():
        set_metadata(result.model, key, value)
    logger.info("fine-tuned %s: L=%d, %d epoch(s), accuracy %s -> %s", source, levels, epochs,
                _pct(result.initial_val_accuracy), _pct(result.val_accuracy))
    return result


def _train(torch, net, train: Dataset, held: Dataset | None, result: FinetuneResult, *,
           epochs: int, lr: float, batch_size: int, seed: int, progress: bool) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    X, Y = torch.from_numpy(train.x), torch.from_numpy(train.y.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    steps = -(-len(X) // batch_size)
    with _progress(progress) as bar:
        task = bar.add_task("fine-tuning", total=epochs * steps, status="") if bar else None
        for epoch in range(1, epochs + 1):
            start, total, seen = time.perf_counter(), 0.0, 0
            net.train()
            perm = torch.randperm(len(X), generator=gen)
            for i in range(0, len(X), batch_size):
                idx = perm[i:i + batch_size]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(X[idx]), Y[idx])
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for lam in net.lam_parameters():
                        lam.clamp_(min=1e-4)
                total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
                if bar:
                    bar.update(task, advance=1)
            acc = _accuracy(torch, net, held, batch_size)
            stats = EpochStats(epoch, total / seen, acc, time.perf_counter() - start)
            result.history.append(stats)
            logger.info("epoch %d/%d: loss %.4f, held-out accuracy %s, %.1fs", epoch, epochs,
                        stats.loss, _pct(acc), stats.seconds)
            if bar:
                bar.update(task, status=f"epoch {epoch}: loss {stats.loss:.4f}, "
                                        f"held-out acc {_pct(acc)}")


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
                raise OptionError("--maxpool-to-avgpool", f"MaxPool node '{node.name}' has "
                                  "dilations or an Indices output; it cannot become AveragePool")
            keep = [a for a in node.attribute if a.name not in ("dilations", "storage_order")]
            del node.attribute[:]
            node.attribute.extend(keep)
            node.op_type, changed = "AveragePool", changed + 1
    logger.info("replaced %d max pool(s) by average pools", changed)
    return out


def _check_options(levels: int, epochs: int, lr: float, batch_size: int) -> None:
    if levels < 1:
        raise OptionError("--levels", f"must be at least 1, got {levels}")
    if epochs < 0:
        raise OptionError("--epochs", f"must be at least 0, got {epochs}")
    if not lr > 0:
        raise OptionError("--lr", f"must be positive, got {lr}")
    if batch_size < 1:
        raise OptionError("--batch-size", f"must be at least 1, got {batch_size}")


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


__all__ = ["EpochStats", "FinetuneResult", "finetune", "maxpool_as_avgpool"]
