"""Evaluation: accuracy of an ANN, or of an SNN at every time step, with onnxruntime."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import onnx

from onnx_rmpe import validate
from onnx_rmpe.data import check_fits, check_labels, load_data
from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.modelio import get_metadata, model_kind, read_model
from onnx_rmpe.passes.qcfs_to_if import PER_STEP_SUFFIX
from onnx_rmpe.runtime.memory import plan_batch
from onnx_rmpe.runtime.metrics import AccuracyCounter
from onnx_rmpe.runtime.options import RuntimeOptions
from onnx_rmpe.runtime.progress import progress_bar
from onnx_rmpe.runtime.ray_engine import ENGINES, ray_classes, require_ray
from onnx_rmpe.runtime.session import (
    Device,
    active_provider,
    batches,
    make_session,
    resolve_providers,
    run,
)

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Top-1 accuracy; for an SNN also the accuracy after every step (``steps``)."""

    kind: str
    samples: int
    accuracy: float
    provider: str
    seconds: float
    T: int | None = None
    steps: list[int] = field(default_factory=list)
    accuracy_per_step: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if k == "seconds" else v) for k, v in vars(self).items()}


def evaluate(model: str | os.PathLike | onnx.ModelProto, data, *,
             steps: list[int] | None = None, batch_size: int = 256, samples: int | None = None,
             threads: int | None = None, device: Device = "cpu",
             providers: Sequence[str] | None = None, max_memory: int | None = None,
             runtime: RuntimeOptions | None = None,
             unroll: bool | None = None, engine: str = "local",
             progress: bool = False) -> EvaluationResult:
    """Accuracy of ``model`` on labelled ``data`` (path, ``(x, y)`` or Dataset).

    For an SNN, the accuracy after each step comes from its ``<output>_per_step`` output;
    ``steps`` selects which steps to report (default: all). ``max_memory`` (bytes; default
    half the available memory) bounds the batch size. ``unroll`` runs a multi-step
    SNN in its network-unrolled form (:func:`onnx_rmpe.forms.snn_to_unrolled`: the same
    outputs up to float rounding, faster in benchmarks/runtime.py); default: when T <= 64.
    ``engine``: ``local`` runs the batches in this process; ``ray`` runs them as Ray Data
    ``map_batches`` over one onnxruntime session per Ray actor, on the cluster this process
    is connected to or that ``RAY_ADDRESS`` names, else a local one
    (:mod:`onnx_rmpe.runtime.ray_engine`; needs ``onnx-rmpe[ray]``): the same accuracies.
    """
    batch_size, threads, device, max_memory = RuntimeOptions.resolve(
        runtime, batch_size=batch_size, threads=threads, device=device, providers=providers,
        max_memory=max_memory)
    start = time.perf_counter()
    validate.batch_size(batch_size)
    validate.samples("samples", samples)
    validate.threads(threads)
    validate.choice("engine", engine, ENGINES)
    if engine == "ray":
        require_ray()
    proto, _ = read_model(model)
    ds = load_data(data, require_labels=True).head(samples)
    check_fits(ds, proto)
    check_labels(ds, _classes(proto))
    kind = model_kind(proto)
    if kind not in ("snn-streaming", "snn-chunked"):
        batch_size = plan_batch(proto, batch_size, max_memory, what=f"the {kind.upper()}")
    if kind == "snn" and _should_unroll(proto, unroll):
        from onnx_rmpe.forms import snn_to_unrolled

        proto = snn_to_unrolled(proto)
    ds.x = ds.x.astype(_input_dtype(proto), copy=False)
    counter = AccuracyCounter()
    if engine == "ray":
        factory = partial(_remote_predictor, proto.SerializeToString(), model_kind(proto),
                          threads, device)
        classes = ray_classes(factory, ds.x, batch_size=batch_size,
                              cpus_per_actor=float(threads or 1))
        counter.update_classes(classes.T, ds.y)
        provider = f"ray/{resolve_providers(device)[0]}"
    else:
        predict, provider = _predictor(proto, model_kind(proto), threads=threads,
                                       device=device)
        with progress_bar(progress, "evaluate") as bar:
            task = bar.add_task(kind, total=len(ds))
            for sl in batches(len(ds), batch_size):
                counter.update(predict(ds.x[sl]), ds.y[sl])
                bar.advance(task, sl.stop - sl.start)
    acc = counter.accuracy()
    result = EvaluationResult(kind, len(ds), acc[-1], provider, time.perf_counter() - start)
    if kind.startswith("snn"):
        T = len(acc)
        chosen = _steps(steps, T)
        result.T, result.steps = T, chosen
        result.accuracy_per_step = [acc[t - 1] for t in chosen]
    meta = get_metadata(proto)
    logger.info("evaluated %s (%s) on %d samples: %.4f", meta.get("onnx_rmpe.kind", kind),
                result.provider, len(ds), result.accuracy)
    return result


def _classes(proto: onnx.ModelProto) -> int | None:
    """The size of the last axis of the first output (the number of classes), if static."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None


def _input_dtype(proto: onnx.ModelProto) -> np.dtype:
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    return onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type or 1)


UNROLL_MAX_T = 64


def _should_unroll(proto: onnx.ModelProto, unroll: bool | None) -> bool:
    T = int(get_metadata(proto).get("onnx_rmpe.T", 0))
    if unroll is None:
        return 1 <= T <= UNROLL_MAX_T
    if unroll and T < 1:
        raise OptionError("unroll", "the SNN has no 'onnx_rmpe.T' metadata; convert it again")
    return unroll


def _predictor(proto: onnx.ModelProto, kind: str, *, threads: int | None, device: str):
    """A function from a batch of inputs to logits (``[T, N, K]`` for an SNN), and the
    provider that runs it."""
    if kind in ("snn-streaming", "snn-chunked"):
        from onnx_rmpe.runtime.streaming import StreamingRunner

        T = int(get_metadata(proto).get("onnx_rmpe.T", 0))
        if T < 1:
            raise ConversionError("streaming SNN without 'onnx_rmpe.T' in its metadata")
        runner = StreamingRunner(proto, device=device, threads=threads)
        return (lambda x: runner.run(x, T)), active_provider(runner.session)
    session = make_session(proto, threads=threads, device=device)
    outputs = [o.name for o in session.get_outputs()]
    wanted = outputs[0]
    if kind in ("snn", "snn-unrolled"):
        wanted = outputs[0] + PER_STEP_SUFFIX
        if wanted not in outputs:
            raise ConversionError(f"SNN has no output '{wanted}' (per-step logits)")
    input_name = session.get_inputs()[0].name
    return (lambda x: run(session, [wanted], {input_name: x})[0]), active_provider(session)


def _remote_predictor(payload: bytes, kind: str, threads: int | None, device):
    """The predictor of a serialized model (built on each Ray actor)."""
    return _predictor(onnx.ModelProto.FromString(payload), kind, threads=threads,
                      device=device)[0]


def _steps(steps: list[int] | None, T: int) -> list[int]:
    if not steps:
        return list(range(1, T + 1))
    bad = [t for t in steps if not 1 <= t <= T]
    if bad:
        raise OptionError("steps", f"steps {bad} are outside 1..{T} (the SNN was built for T={T})")
    return sorted(set(steps))
