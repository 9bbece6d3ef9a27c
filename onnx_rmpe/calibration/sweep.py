"""The layer-by-layer sweep of RMPE calibration: segments, neuron simulation, corrections.

The input currents come from :class:`onnx_rmpe.runtime.feeder.SegmentFeeder`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from onnx_rmpe.calibration.results import LayerReport
from onnx_rmpe.data import Dataset
from onnx_rmpe.runtime.feeder import SegmentFeeder, current_cache
from onnx_rmpe.runtime.segments import Layer, Segment
from onnx_rmpe.runtime.session import Device, batches, make_session
from onnx_rmpe.runtime.simulate import simulate_if
from onnx_rmpe.runtime.spike_cache import SpikeStore, merge_packed

logger = logging.getLogger(__name__)


#: Largest input-current cache of one layer (bytes, in memory, freed after the layer);
#: beyond it the currents go to a file (up to ``DISK_CURRENT_BYTES``), beyond that the
#: second pass runs the segment again instead.
CURRENT_CACHE_BYTES = 256 << 20
#: Largest input-current file of one layer (bytes on disk, deleted after the layer).
DISK_CURRENT_BYTES = 4 << 30


@dataclass(frozen=True)
class SweepSettings:
    """What one calibration sweep needs besides the segments and the data."""

    T: int
    phi: float
    granularity: str
    batch_size: int
    #: Largest input-current cache of one layer (bytes), see ``CURRENT_CACHE_BYTES``.
    current_bytes: int
    threads: int | None
    device: Device


def _sweep(segs: list[Segment], ds: Dataset, targets, v_inits, settings: SweepSettings,
           store, bar, sweep, readout: Segment | None = None
           ) -> tuple[list[LayerReport], np.ndarray | None]:
    """One front-to-back sweep; with ``readout`` also the SNN's (first) output, computed by
    the readout segment on the calibrated spikes."""
    T, phi, granularity = settings.T, settings.phi, settings.granularity
    batch_size, current_bytes = settings.batch_size, settings.current_bytes
    threads, device = settings.threads, settings.device
    caches: dict[str, np.ndarray] = {}
    thetas = {s.layer.spikes: s.layer.theta for s in segs}
    last_use = {name: i for i, s in enumerate(segs) for name in s.spike_inputs}
    if readout is not None:
        last_use.update({name: len(segs) for name in readout.spike_inputs})
    reports = []
    disk = SpikeStore(store.directory, "currents")  # currents on disk between the passes
    for i, seg in enumerate(segs):
        layer, target, v_prev = seg.layer, targets[seg.layer.name], v_inits[seg.layer.name]
        session = make_session(seg.model, threads=threads, device=device)
        task = bar.add_task(f"sweep {sweep + 1}: {layer.name}", total=2 * len(ds))
        feed = SegmentFeeder(seg, session, ds, caches, thetas, T, store=lambda shape, seg=seg:
                             current_cache(seg, (T, len(ds)) + shape, current_bytes, disk,
                                           DISK_CURRENT_BYTES))
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
        feed.close()
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
    outputs = None
    if readout is not None:
        session = make_session(readout.model, threads=threads, device=device)
        feed = SegmentFeeder(readout, session, ds, caches, thetas, T)
        outputs = np.concatenate([session.run([readout.layer.current], feed.inputs(sl))[0]
                                  for sl in batches(len(ds), batch_size)])
    for cache in caches.values():
        store.free(cache)
    return reports, outputs

def _granular(values: np.ndarray, granularity: str) -> np.ndarray:
    """Per neuron as is; per channel the mean over all but the channel axis (kept, size 1)."""
    if granularity == "channel" and values.ndim > 1:
        return values.mean(axis=tuple(range(1, values.ndim)), keepdims=True)
    return values

def _merge(chosen, other, better: np.ndarray, batch_size: int):
    """Spikes of the chosen initial potential per neuron: ``chosen`` where ``better``
    (on the packed bits of spike caches; plain arrays as they are)."""
    if hasattr(chosen, "read_raw") and hasattr(other, "read_raw"):
        return merge_packed(chosen, other, np.broadcast_to(better, chosen.shape[2:]),
                            batch_size)
    for sl in batches(chosen.shape[1], batch_size):
        chosen[:, sl] = np.where(better, chosen[:, sl], other[:, sl])
    return chosen

def _simulate(feed: SegmentFeeder, layer: Layer, v_init: np.ndarray, T: int, phi: float,
              batch_size: int, bar, task, cache=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the layer over the data with initial potential ``v_init``.

    Returns the mean rate per neuron (``theta * N(T) / T``) and, when ``cache`` (a factory
    of ``[T, samples, ...]`` arrays) is given, the spike trains.
    """
    total, spikes_all = None, None
    for sl in batches(len(feed.ds), batch_size):
        x = feed.current(sl)
        spikes, _ = simulate_if(x, layer.theta, v_init, phi)
        fired = np.count_nonzero(spikes.reshape((-1,) + spikes.shape[2:]), axis=0)
        total = fired if total is None else total + fired
        if cache is not None:
            if spikes_all is None:
                spikes_all = cache(spikes.shape[2:])
            spikes_all[:, sl] = spikes
        bar.advance(task, sl.stop - sl.start)
    feed.finish_pass()
    return total * float(layer.theta) / (T * len(feed.ds)), spikes_all
