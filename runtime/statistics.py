"""Statistics of a model's intermediate tensors on data, computed with onnxruntime.

Used for QCFS thresholds: ``lam`` of a layer is a high percentile (default 99.9) of the
positive values of its pre-activation over the calibration set. Values are gathered
batch by batch with at most ``max_values`` kept per tensor (a uniform random subsample
beyond that), so memory stays bounded for any data set size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx

from onnx_rmpe.runtime.session import Device, make_session, run_batched

logger = logging.getLogger(__name__)


def expose_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` with the tensors ``names`` added as graph outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return copy


def positive_percentiles(model: onnx.ModelProto, x: np.ndarray, tensors: Sequence[str], *,
                         percentile: float = 99.9, batch_size: int = 128,
                         max_values: int = 2_000_000, seed: int = 0,
                         threads: int | None = None, device: Device = "cpu") -> dict[str, float]:
    """The ``percentile`` of the positive values of each tensor in ``tensors`` over ``x``.

    Beyond ``max_values // len(x)`` positive values per sample and tensor, a uniform random
    subsample is kept, drawn per sample from a generator seeded by ``(seed, sample, tensor)``:
    the result does not depend on ``batch_size``. A tensor with no positive value gets NaN
    (the caller decides what that means).
    """
    session = make_session(expose_outputs(model, tensors), threads=threads, device=device)
    kept: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    per_sample = max(1, max_values // max(len(x), 1))
    for sl, values in run_batched(session, x, list(tensors), batch_size=batch_size):
        for k, (name, v) in enumerate(zip(tensors, values)):
            for j, sample in enumerate(v):
                pos = sample[sample > 0]
                if pos.size > per_sample:
                    rng = np.random.default_rng((seed, sl.start + j, k))
                    pos = pos[rng.random(pos.size) < per_sample / pos.size]
                kept[name].append(pos.astype(np.float32))
    result = {}
    for name, parts in kept.items():
        allpos = np.concatenate(parts) if parts else np.empty(0, np.float32)
        result[name] = float(np.percentile(allpos, percentile)) if allpos.size else float("nan")
    return result
