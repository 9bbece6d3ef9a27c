"""The layer-by-layer sweep of RMPE calibration: segments, neuron simulation, corrections.

Moved from ``onnx_rmpe/calibrate.py`` unchanged (see :mod:`onnx_rmpe.calibration`).
"""

from __future__ import annotations

import logging

import numpy as np

from onnx_rmpe.calibration.results import LayerReport
from onnx_rmpe.data import Dataset
from onnx_rmpe.runtime.neurons import if_reference
from onnx_rmpe.runtime.segments import Layer, Segment
from onnx_rmpe.runtime.session import batches, make_session

logger = logging.getLogger(__name__)


#: Largest input-current cache of one layer (bytes, in memory, freed after the layer);
#: beyond it the second pass runs the segment again instead.
CURRENT_CACHE_BYTES = 256 << 20

def _sweep(segs: list[Segment], ds: Dataset, targets, v_inits, T, phi, granularity, batch_size,
           current_bytes,
           threads, device, store, bar, sweep) -> list[LayerReport]:
    caches: dict[str, np.ndarray] = {}
    thetas = {s.layer.spikes: s.layer.theta for s in segs}
    last_use = {name: i for i, s in enumerate(segs) for name in s.spike_inputs}
    reports = []
    for i, seg in enumerate(segs):
        layer, target, v_prev = seg.layer, targets[seg.layer.name], v_inits[seg.layer.name]
        session = make_session(seg.model, threads=threads, device=device)
        task = bar.add_task(f"sweep {sweep + 1}: {layer.name}", total=2 * len(ds))
        feed = _Feeder(seg, session, ds, caches, thetas, T,
                       store=lambda shape: _ram_cache((T, len(ds)) + shape, current_bytes))
        keep = last_use.get(layer.spikes, -1) > i
        cache = (lambda shape: store.new((T, len(ds)) + shape)) if keep else None
        r_prev, spikes_prev = _simulate(feed, layer, v_prev, T, phi, batch_size, bar, task, cache)
        v_new = (v_prev + _granular(T * (target - r_prev), granularity)).astype(np.float32)
        r_new, spikes_new = _simulate(feed, layer, v_new, T, phi, batch_size, bar, task, cache)
        # A neuron keeps the correction only where it helps: the linear response assumed by
        # the closed form fails for neurons whose input barely varies (e.g. at T <= 2).
        better = _granular(np.abs(target - r_new), granularity) <= \
            _granular(np.abs(target - r_prev), granularity)
        v_inits[layer.name] = np.where(better, v_new, v_prev).astype(np.float32)
        r_after = np.where(better, r_new, r_prev)
        if keep:
            caches[layer.spikes] = _merge(spikes_new, spikes_prev, better, batch_size)
            store.free(spikes_prev)
        reports.append(LayerReport(layer.name, int(r_prev.size),
                                   float(np.abs(target - r_prev).mean()),
                                   float(np.abs(target - r_after).mean()),
                                   float(r_after.mean() / float(layer.theta)),
                                   float(np.abs(v_inits[layer.name]).mean())))
        for name in [n for n, last in last_use.items() if last == i and n in caches]:
            store.free(caches.pop(name))
        bar.remove_task(task)
    return reports

def _granular(values: np.ndarray, granularity: str) -> np.ndarray:
    """Per neuron as is; per channel the mean over all but the channel axis (kept, size 1)."""
    if granularity == "channel" and values.ndim > 1:
        return values.mean(axis=tuple(range(1, values.ndim)), keepdims=True)
    return values

def _merge(chosen: np.ndarray, other: np.ndarray, better: np.ndarray,
           batch_size: int) -> np.ndarray:
    """Spikes of the chosen initial potential per neuron: ``chosen`` where ``better``."""
    for sl in batches(chosen.shape[1], batch_size):
        chosen[:, sl] = np.where(better, chosen[:, sl], other[:, sl])
    return chosen

class _Feeder:
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
        feed = {}
        if self.seg.needs_input:
            feed[self.input_name] = self.ds.x[sl]
        for name in self.seg.spike_inputs:
            spikes = np.asarray(self.caches[name][:, sl])
            feed[name] = (spikes.astype(np.float32) * self.thetas[name]).reshape(
                (-1,) + spikes.shape[2:])
        x = self.session.run([self.seg.layer.current], feed)[0]
        x = x.reshape((self.T, -1) + x.shape[1:])
        if self.store is not None:
            if self.stored is None:
                self.stored = self.store(x.shape[2:])
                self.store = None if self.stored is None else self.store
            if self.stored is not None:
                self.stored[:, sl] = x
        return x

    def finish_pass(self) -> None:
        self.complete = self.stored is not None
        self.store = None

def _simulate(feed: _Feeder, layer: Layer, v_init: np.ndarray, T: int, phi: float,
              batch_size: int, bar, task, cache=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the layer over the data with initial potential ``v_init``.

    Returns the mean rate per neuron (``theta * N(T) / T``) and, when ``cache`` (a factory
    of ``[T, samples, ...]`` arrays) is given, the spike trains.
    """
    total, spikes_all = None, None
    for sl in batches(len(feed.ds), batch_size):
        x = feed.current(sl)
        spikes, _ = if_reference(x, layer.theta, v_init, phi)
        fired = np.count_nonzero(spikes.reshape((-1,) + spikes.shape[2:]), axis=0)
        total = fired if total is None else total + fired
        if cache is not None:
            if spikes_all is None:
                spikes_all = cache(spikes.shape[2:])
            spikes_all[:, sl] = spikes
        bar.advance(task, sl.stop - sl.start)
    feed.finish_pass()
    return total * float(layer.theta) / (T * len(feed.ds)), spikes_all

def _ram_cache(shape: tuple[int, ...], limit: int) -> np.ndarray | None:
    """A float32 array in memory, or None if it would take more than ``limit`` bytes."""
    if int(np.prod(shape, dtype=np.int64)) * 4 > limit:
        return None
    return np.empty(shape, np.float32)
