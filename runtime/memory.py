"""Memory budget: estimate what one sample costs a model run and pick the batch size.

The estimate is the sum of the sizes of every tensor the model computes for one sample
(onnx shape inference with the batch fixed to 1: for an SNN the time-merged tensors then
hold ``T`` rows). onnxruntime reuses buffers, so its real peak is below this sum: the
estimate errs on the safe side. A run asks for ``batch_size`` samples at a time and gets at
most what fits the budget; a run that does not fit even one sample at a time is refused
before any work, with the estimate.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx

from onnx_rmpe.errors import MemoryBudgetError

logger = logging.getLogger(__name__)

#: Share of the available memory a run may use when the user sets no budget.
DEFAULT_SHARE = 0.5
_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8,
             onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4, onnx.TensorProto.BOOL: 1}


def _proc_kib(path: str, key: str) -> int | None:
    """Bytes of the ``key:`` line (in kB) of a /proc file, or None where it is missing."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory() -> int:
    """Bytes of memory available to a new process (``MemAvailable``, else free pages)."""
    found = _proc_kib("/proc/meminfo", "MemAvailable")
    if found is not None:
        return found
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_budget() -> int:
    return int(DEFAULT_SHARE * available_memory())


def parse_size(text: str | int | float | None) -> int | None:
    """``'4G'``, ``'512M'``, ``'1.5GB'``, ``2**30`` -> bytes; ``None`` stays None."""
    if text is None or isinstance(text, (int, float)) and not isinstance(text, bool):
        return None if text is None else int(text)
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1] if s and s[-1] in units else ""
    try:
        return int(float(s[: len(s) - len(unit)]) * units[unit])
    except ValueError:
        return -1


def bytes_per_sample(model: onnx.ModelProto) -> int:
    """Sum of the sizes of the tensors the model computes for one sample (see module doc)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    inits = {i.name for i in probe.graph.initializer}
    for vi in probe.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - an estimate, not a must
        logger.debug("shape inference for the memory estimate failed: %s", exc)
        inferred = probe
    total = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
        if dims and all(d > 0 for d in dims):
            total += int(np.prod(dims, dtype=np.int64)) * _ITEMSIZE.get(tt.elem_type, 4)
    return max(total, 1)


def plan_batch(model: onnx.ModelProto, batch_size: int, budget: int | None, *,
               what: str, extra_per_sample: int = 0) -> int:
    """The batch size to run ``model`` with inside ``budget`` bytes (default: half the
    available memory); raises :class:`MemoryBudgetError` if one sample does not fit."""
    budget = default_budget() if budget is None else budget
    per_sample = bytes_per_sample(model) + extra_per_sample
    fits = budget // per_sample
    if fits < 1:
        raise MemoryBudgetError(
            "max_memory", f"{what} needs an estimated {_human(per_sample)} per sample, more "
                          f"than the budget of {_human(budget)}; lower T, use a smaller "
                          "model input, or raise the budget (--max-memory)")
    if fits < batch_size:
        logger.info("%s: batch size %d -> %d to stay within %s (estimated %s per sample)",
                    what, batch_size, fits, _human(budget), _human(per_sample))
    return int(min(batch_size, fits))


def resident_bytes() -> int:
    """The process's resident memory now (``VmRSS``; 0 where /proc is not available)."""
    return _proc_kib("/proc/self/status", "VmRSS") or 0


def plan_batch_within(model: onnx.ModelProto, batch_size: int, budget: int | None, *,
                      what: str, reserved: int = 0) -> int:
    """:func:`plan_batch` for a run inside a process that already holds memory and keeps
    ``reserved`` bytes beside its batches (caches): the batches get the budget minus both,
    so the process's peak stays near the budget; at least a quarter of the budget, so a
    budget below what the process itself needs still runs (with small batches)."""
    budget = default_budget() if budget is None else budget
    room = max(budget - reserved - resident_bytes(), budget // 4)
    return plan_batch(model, batch_size, room, what=what)


def cache_limit(budget: int | None, default: int) -> int:
    """Bytes a run may keep in RAM beside its batches: ``default``, at most a quarter of the
    budget."""
    budget = default_budget() if budget is None else budget
    return int(min(default, budget // 4))


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
