"""onnxruntime sessions: provider choice (with a loud fallback), threads, batched runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import onnx

from onnx_rmpe.errors import DataError, MissingDependencyError, OptionError

logger = logging.getLogger(__name__)

DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "cpu", "running a model") from None
    return onnxruntime


Device = str | Sequence[str]


def resolve_providers(device: Device = "cpu", providers: Sequence[str] | None = None) -> list[str]:
    """The providers to ask for: explicit ``providers`` win over ``device``.

    ``device`` is ``cpu``, ``cuda`` or itself a list of onnxruntime provider names.
    """
    if providers:
        return list(providers)
    if not isinstance(device, str):
        return list(device)
    if device not in DEVICE_PROVIDERS:
        raise OptionError("device", f"unknown device '{device}'; choose cpu or cuda")
    return DEVICE_PROVIDERS[device]


def make_session(model: onnx.ModelProto | bytes | str, *, device: Device = "cpu",
                 providers: Sequence[str] | None = None, threads: int | None = None):
    """An InferenceSession; warns when a requested provider is not the one that runs."""
    ort = _ort()
    wanted = resolve_providers(device, providers)
    available = set(ort.get_available_providers())
    usable = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    if usable[0] != wanted[0]:
        logger.warning("%s is not available in this onnxruntime (%s); running on %s. "
                       "Install onnx-rmpe[gpu] for CUDA.", wanted[0], ort.__version__, usable[0])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(payload, sess_options=opts, providers=usable)
    ran = session.get_providers()[0]
    if ran != wanted[0] and usable[0] == wanted[0]:
        logger.warning("asked for %s, but onnxruntime runs on %s", wanted[0], ran)
    return session


def run(session, outputs: Sequence[str] | None, feed: dict[str, np.ndarray]) -> list:
    """``session.run``; an onnxruntime failure on the given inputs becomes a
    :class:`DataError` with the input shapes and onnxruntime's first line."""
    try:
        return session.run(list(outputs) if outputs else None, feed)
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        shapes = ", ".join(f"'{k}' {list(v.shape)}" for k, v in feed.items())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"onnxruntime cannot run the model on inputs of shape {shapes}; do the "
                        f"data fit the model's input (size, layout)? onnxruntime says: "
                        f"{first[:300]}") from None


def active_provider(session) -> str:
    return session.get_providers()[0]


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def run_batched(session, x: np.ndarray, outputs: Sequence[str] | None = None, *,
                batch_size: int = 256) -> Iterator[tuple[slice, list[np.ndarray]]]:
    """Run ``session`` on ``x`` batch by batch; yields ``(slice, outputs)``."""
    input_name = session.get_inputs()[0].name
    for sl in batches(len(x), batch_size):
        yield sl, run(session, outputs, {input_name: x[sl]})
