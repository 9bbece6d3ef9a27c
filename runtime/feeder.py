"""Feeding one calibration segment batch by batch (RMPE calibration, threshold search).

:class:`SegmentFeeder` gives a segment (:mod:`onnx_rmpe.runtime.segments`) its inputs: the
raw data and/or the cached spikes of earlier layers (as ``theta * s``), and keeps the
layer's input currents of the first pass (in an array from ``store``, e.g.
:func:`current_cache`: in memory when small, else in a file) so that later passes read them
instead of running the segment again.
"""

from __future__ import annotations

import numpy as np

from onnx_rmpe.data import Dataset
from onnx_rmpe.runtime.segments import Segment
from onnx_rmpe.runtime.spike_cache import DiskArray


class SegmentFeeder:
    """Feeds a segment batch by batch: the raw input and/or cached spikes (as theta * s).

    The first pass over the data also keeps the layer's input currents (up to
    ``CURRENT_CACHE_BYTES``), so the second pass reads them instead of running the segment
    again.
    """

    def __init__(self, seg: Segment, session, ds: Dataset, caches, thetas, T: int,
                 store=None) -> None:
        self.seg, self.session, self.ds, self.caches, self.T = seg, session, ds, caches, T
        self.thetas, self.store = thetas, store
        self.stored: np.ndarray | None = None
        self.complete = False
        self.input_name = session.get_inputs()[0].name if seg.needs_input else None

    def current(self, sl: slice) -> np.ndarray:
        if self.complete:
            return np.asarray(self.stored[:, sl])
        x = self.session.run([self.seg.layer.current], self.inputs(sl))[0]
        x = x.reshape((self.T, -1) + x.shape[1:])
        if self.store is not None:
            if self.stored is None:
                self.stored = self.store(x.shape[2:])
                self.store = None if self.stored is None else self.store
            if self.stored is not None:
                self.stored[:, sl] = x
        return x

    def inputs(self, sl: slice) -> dict[str, np.ndarray]:
        """The segment's feed for the samples ``sl``: raw input and cached spikes."""
        feed = {}
        if self.seg.needs_input:
            feed[self.input_name] = self.ds.x[sl]
        for name in self.seg.spike_inputs:
            spikes = np.asarray(self.caches[name][:, sl])
            theta = np.asarray(self.thetas[name], np.float32)  # Cast(s) * theta, in one go
            feed[name] = np.multiply(spikes, theta, dtype=np.float32).reshape(
                (-1,) + spikes.shape[2:])
        return feed

    def finish_pass(self) -> None:
        self.complete = self.stored is not None
        self.store = None

    def close(self) -> None:
        """Drop the kept currents (deleting their file if they were on disk)."""
        if isinstance(self.stored, DiskArray):
            self.stored.close()
        self.stored, self.complete = None, False


def ram_cache(shape: tuple[int, ...], limit: int) -> np.ndarray | None:
    """A float32 array in memory, or None if it would take more than ``limit`` bytes."""
    if int(np.prod(shape, dtype=np.int64)) * 4 > limit:
        return None
    return np.empty(shape, np.float32)


def current_cache(seg: Segment, shape: tuple[int, ...], ram_limit: int, disk=None,
                  disk_limit: int = 0) -> np.ndarray | DiskArray | None:
    """Where a segment's input currents ``shape`` (float32) are kept between passes.

    In memory up to ``ram_limit`` bytes; else in a file of ``disk`` (a
    :class:`onnx_rmpe.runtime.spike_cache.SpikeStore`) up to ``disk_limit`` bytes, for
    segments that read spikes (reading the file back is faster than running their layers
    on ``T x`` the samples again; a segment fed by the static input alone runs on ``N``
    samples and tiles, cheaper than the file); else None (the segment runs again).
    """
    kept = ram_cache(shape, ram_limit)
    if kept is not None or disk is None or not seg.spike_inputs:
        return kept
    if int(np.prod(shape, dtype=np.int64)) * 4 > disk_limit:
        return None
    return disk.new(shape, DiskArray)


__all__ = ["SegmentFeeder", "current_cache", "ram_cache"]
