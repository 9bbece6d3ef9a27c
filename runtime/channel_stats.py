"""Per-channel percentiles of a model's intermediate tensors (for channel equalization).

One QCFS threshold per layer fits a layer whose channels share one range. Real nets'
channels do not (a DenseNet stem, a MobileNetV2 depthwise layer: 99.9th percentiles from
0.7 to 5.4 in one layer), so the graph pass ``equalize_channels`` rescales channels
to one range; it needs each channel's percentile, computed here.

The values are gathered as in :func:`onnx_rmpe.runtime.statistics.positive_percentiles`:
per sample and tensor, at most ``max_values // (samples * channels)`` positive values per
channel are kept (a uniform subsample drawn from a generator seeded by ``(seed, sample,
tensor)``), so the result does not depend on the batch size and memory stays bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx

from onnx_rmpe.runtime.session import Device, make_session, run_batched
from onnx_rmpe.runtime.statistics import expose_outputs

logger = logging.getLogger(__name__)


def channel_percentiles(model: onnx.ModelProto, x: np.ndarray, tensors: Sequence[str], *,
                        percentile: float = 99.9, batch_size: int = 128,
                        max_values: int = 4_000_000, seed: int = 0, threads: int | None = None,
                        device: Device = "cpu", min_rank: int = 3) -> dict[str, np.ndarray]:
    """The ``percentile`` of the positive values of each channel (axis 1) of each tensor.

    Returns ``{tensor: array [C]}`` for the tensors of rank ``min_rank`` or more (feature
    maps: a channel has many values per sample; a dense layer's feature has one, too few
    for a per-feature percentile); a channel with no positive value gets NaN.
    """
    session = make_session(expose_outputs(model, tensors), threads=threads, device=device)
    values: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    channels: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    sizes: dict[str, int] = {}
    for sl, outs in run_batched(session, x, list(tensors), batch_size=batch_size):
        for k, (name, v) in enumerate(zip(tensors, outs)):
            if v.ndim < min_rank:
                continue
            rows = v.reshape(v.shape[0], v.shape[1], -1)
            sizes[name] = rows.shape[1]
            per = max(1, max_values // max(len(x) * rows.shape[1], 1))
            for j, row in enumerate(rows):
                pos = row > 0
                count = pos.sum(axis=1, keepdims=True)
                if (count > per).any():
                    rng = np.random.default_rng((seed, sl.start + j, k))
                    pos &= rng.random(row.shape) < per / np.maximum(count, 1)
                c, _ = np.nonzero(pos)
                values[name].append(row[pos].astype(np.float32))
                channels[name].append(c.astype(np.uint16 if rows.shape[1] < 2**16
                                                        else np.int32))
    return {name: _per_channel(np.concatenate(values[name]), np.concatenate(channels[name]),
                               sizes[name], percentile) for name in tensors if name in sizes}


def _per_channel(values: np.ndarray, channel: np.ndarray, size: int,
                 percentile: float) -> np.ndarray:
    """``np.percentile`` (linear interpolation) of ``values`` grouped by ``channel``."""
    order = np.lexsort((values, channel))
    values, channel = values[order], channel[order]
    counts = np.bincount(channel, minlength=size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full(size, np.nan, np.float64)
    for c in np.nonzero(counts)[0]:
        a = values[starts[c]:starts[c] + counts[c]]
        pos = percentile / 100.0 * (a.size - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, a.size - 1)
        out[c] = float(a[lo]) + (float(a[hi]) - float(a[lo])) * (pos - lo)
    return out


__all__ = ["channel_percentiles"]
