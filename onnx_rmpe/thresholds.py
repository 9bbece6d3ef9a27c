"""Per-layer thresholds chosen for the target T: minimize each layer's SNN-vs-ANN error.

A fixed high percentile (99.9) of the positive pre-activations is a good QCFS threshold
for a long simulation, but at small ``T`` an IF layer can only express ``T + 1`` rates
``{0, theta/T, ..., theta}``: a high ``theta`` wastes them on rare large values and the
unevenly arriving input spikes make it worse. This step chooses, for one ``T``, each IF
layer's ``theta`` by minimizing, on the calibration data, that layer's squared error

    E(theta) = sum_i || theta * N_i(T; theta) / T  -  relu(z_i) ||^2

between the SNN rate (``N_i`` spikes of the IF neuron with ``v(0) = phi * theta``, fed
with the *SNN's* input currents) and the ReLU ANN activation of the same sample.
Layers are set front to back: layer ``l``'s currents come from the spikes of layers
``1..l-1`` with their chosen thresholds (cached, as in RMPE calibration, see
:mod:`onnx_rmpe.runtime.segments`), so each choice sees the errors of the layers before
it. The candidates are the percentile start ``lam0`` times ``SCALES`` (1 first, down to
1/16), then the best of those times ``REFINE`` (steps of 2^(1/6)); the smallest error
wins, a candidate must beat the ones before it by a relative ``TIE`` to replace them, so
float rounding (batch size, machine) cannot flip a near-tie.

Invariant: every returned threshold is positive and its layer error is at most the
error of the percentile start, measured on the same inputs.

Cost: one ReLU ANN pass (its activations in files, read batch by batch) plus, per layer,
one segment pass (currents kept in memory up to ``CURRENT_CACHE_BYTES``, else in a file up
to ``DISK_CURRENT_BYTES``) and ``len(SCALES) + len(REFINE) + 1`` neuron simulations (the
candidates' spike counts from one read of each batch, :func:`runtime.simulate.count_if`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_rmpe.calibration.sweep import CURRENT_CACHE_BYTES, DISK_CURRENT_BYTES
from onnx_rmpe.data import Dataset
from onnx_rmpe.outputs import WORK_PREFIX
from onnx_rmpe.runtime.feeder import SegmentFeeder as _Feeder
from onnx_rmpe.runtime.feeder import current_cache
from onnx_rmpe.runtime.memory import cache_limit, plan_batch_within
from onnx_rmpe.runtime.neurons import DOMAIN, QCFS_OP
from onnx_rmpe.runtime.segments import Segment, readout_segment, segments
from onnx_rmpe.runtime.session import Device, batches, make_session
from onnx_rmpe.runtime.simulate import count_if, simulate_if
from onnx_rmpe.runtime.spike_cache import DiskArray, SpikeStore
from onnx_rmpe.runtime.statistics import expose_outputs

logger = logging.getLogger(__name__)

#: Coarse candidates, as multiples of the percentile start (the start itself first).
SCALES = tuple(float(2.0 ** (-k / 2)) for k in (0, -1, 1, 2, 3, 4, 5, 6, 7, 8))
#: Refinement around the best coarse candidate (multiples of it).
REFINE = tuple(float(2.0 ** (k / 6)) for k in (-2, -1, 1, 2))
#: A candidate replaces an earlier one only when its error is lower by this fraction.
TIE = 1e-6


@dataclass
class ThresholdReport:
    """One layer: percentile start and chosen threshold, with their mean squared errors."""

    name: str
    start: float
    chosen: float
    error_start: float
    error_chosen: float


def relu_reference(qcfs: onnx.ModelProto) -> onnx.ModelProto:
    """The QCFS model with every QCFS node back to ``Relu`` (the ANN the SNN should match)."""
    model = onnx.ModelProto.FromString(qcfs.SerializeToString())
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == QCFS_OP:
            data = node.input[0]
            del node.input[:]
            node.input.append(data)
            del node.attribute[:]
            node.op_type, node.domain = "Relu", ""
    return model


@dataclass
class ThresholdSearch:
    """What :func:`search` found: thresholds by layer name, one report per layer and, when
    asked for, the first output of the SNN with those thresholds (``v_init = 0``)."""

    thresholds: dict[str, float]
    reports: list[ThresholdReport]
    outputs: np.ndarray | None = None


def search_thresholds(snn: onnx.ModelProto, qcfs: onnx.ModelProto, data: Dataset, *, T: int,
                      phi: float, batch_size: int = 128, threads: int | None = None,
                      device: Device = "cpu", max_memory: int | None = None
                      ) -> tuple[dict[str, float], list[ThresholdReport]]:
    """Thresholds for ``T`` of the IF layers of ``snn`` (its QCFS ANN ``qcfs``), by name.

    ``snn`` is the uncalibrated SNN of ``qcfs`` (its thresholds are the starts). Returns
    ``{layer name: theta}`` and one :class:`ThresholdReport` per layer.
    """
    found = search(snn, qcfs, data, T=T, phi=phi, batch_size=batch_size, threads=threads,
                   device=device, max_memory=max_memory)
    return found.thresholds, found.reports


def search(snn: onnx.ModelProto, qcfs: onnx.ModelProto, data: Dataset, *, T: int, phi: float,
           batch_size: int = 128, threads: int | None = None, device: Device = "cpu",
           max_memory: int | None = None, outputs: bool = False) -> ThresholdSearch:
    """:func:`search_thresholds`, and with ``outputs`` also the first output of the SNN with
    the chosen thresholds (the readout segment run on the chosen spikes the search kept:
    the uncalibrated SNN's outputs, which RMPE's check compares with, without another SNN
    pass)."""
    start_time = time.perf_counter()
    current_bytes = cache_limit(max_memory, CURRENT_CACHE_BYTES)
    batch_size = plan_batch_within(snn, batch_size, max_memory, reserved=current_bytes,
                                   what=f"the threshold search (T={T})")
    segs = segments(snn)
    names = [s.layer.name for s in segs]
    thetas = {s.layer.spikes: float(s.layer.theta) for s in segs}
    last_use = {name: i for i, s in enumerate(segs) for name in s.spike_inputs}
    readout = readout_segment(snn) if outputs else None
    if readout is not None:
        last_use.update({name: len(segs) for name in readout.spike_inputs})
    chosen: dict[str, float] = {}
    reports = []
    with tempfile.TemporaryDirectory(prefix=WORK_PREFIX) as cache_dir:
        store, disk = SpikeStore(cache_dir), SpikeStore(cache_dir, "currents")
        targets = _relu_activations(relu_reference(qcfs), data, names, batch_size, threads,
                                    device, SpikeStore(cache_dir, "relu"))
        caches: dict[str, np.ndarray] = {}
        for i, seg in enumerate(segs):
            layer = seg.layer
            session = make_session(seg.model, threads=threads, device=device)
            feed = _Feeder(seg, session, data, caches, thetas, T, store=lambda shape, seg=seg:
                           current_cache(seg, (T, len(data)) + shape, current_bytes, disk,
                                         DISK_CURRENT_BYTES))
            start = float(layer.theta)
            candidates = [start * s for s in SCALES]
            errors = _errors(feed, targets[layer.name], candidates, T, phi, batch_size)
            finer = [candidates[_argmin(errors)] * s for s in REFINE]
            candidates += finer
            errors += _errors(feed, targets[layer.name], finer, T, phi, batch_size)
            best = _argmin(errors)
            theta = candidates[best]
            chosen[layer.name] = theta
            thetas[layer.spikes] = theta
            n = int(np.prod(targets[layer.name].shape, dtype=np.int64))
            reports.append(ThresholdReport(layer.name, start, theta, errors[0] / n,
                                           errors[best] / n))
            logger.debug("thresholds: %s %.4g -> %.4g (error %.4g -> %.4g)", layer.name, start,
                         theta, errors[0] / n, errors[best] / n)
            if last_use.get(layer.spikes, -1) > i:
                caches[layer.spikes] = _spikes(feed, theta, T, phi, batch_size, store)
            feed.close()
            for name in [k for k, last in last_use.items() if last == i and k in caches]:
                store.free(caches.pop(name))
        found = ThresholdSearch(chosen, reports)
        if readout is not None:
            found.outputs = _readout(readout, data, caches, thetas, T, batch_size, threads,
                                     device)
        for cache in [*caches.values(), *targets.values()]:
            store.free(cache)
        del targets, caches
    logger.info("thresholds for T=%d chosen for %d layer(s) on %d samples in %.1fs", T,
                len(chosen), len(data), time.perf_counter() - start_time)
    return found


def _readout(readout: Segment, data: Dataset, caches, thetas, T: int, batch_size: int,
             threads: int | None, device: Device) -> np.ndarray:
    """The readout segment's output (the SNN's first output) on the cached spikes."""
    session = make_session(readout.model, threads=threads, device=device)
    feed = _Feeder(readout, session, data, caches, thetas, T)
    return np.concatenate([session.run([readout.layer.current], feed.inputs(sl))[0]
                           for sl in batches(len(data), batch_size)])


def _argmin(errors: list[float]) -> int:
    """Index of the smallest error; a later candidate must be lower by ``TIE`` (relative)."""
    best = 0
    for k, e in enumerate(errors):
        if e < errors[best] * (1 - TIE):
            best = k
    return best


def _errors(feed: _Feeder, target, candidates: list[float], T: int, phi: float,
            batch_size: int) -> list[float]:
    """Summed squared error of the layer's rate against ``target`` for each candidate
    (spike counts of all candidates from one read of each batch's currents)."""
    errors = np.zeros(len(candidates), np.float64)
    for sl in batches(len(feed.ds), batch_size):
        x = feed.current(sl)
        t = np.asarray(target[:, sl][0], np.float32)
        counts, _ = count_if(x, candidates, phi)
        for k, (theta, count) in enumerate(zip(candidates, counts)):
            rate = count.astype(np.float32) * np.float32(theta / T)
            errors[k] += float(np.square(rate - t, dtype=np.float64).sum())
    feed.finish_pass()
    return errors.tolist()


def _spikes(feed: _Feeder, theta: float, T: int, phi: float, batch_size: int,
            store: SpikeStore):
    """The layer's spike trains ``[T, samples, ...]`` at ``theta`` (one bit per spike, on
    disk)."""
    out = None
    for sl in batches(len(feed.ds), batch_size):
        spikes, _ = simulate_if(feed.current(sl), theta, 0.0, phi)
        if out is None:
            out = store.new((T, len(feed.ds)) + spikes.shape[2:])
        out[:, sl] = spikes
    feed.finish_pass()
    return out


def _relu_activations(relu: onnx.ModelProto, data: Dataset, names: list[str], batch_size: int,
                      threads: int | None, device: Device,
                      store: SpikeStore) -> dict[str, DiskArray]:
    """Per-sample ReLU ANN activations of the layers ``names`` (``[1, samples, ...]``
    float32 files of ``store``, read batch by batch)."""
    outputs = {n.name: n.output[0] for n in relu.graph.node}
    tensors = [outputs[n] for n in names]
    session = make_session(expose_outputs(relu, tensors), threads=threads, device=device)
    input_name = session.get_inputs()[0].name
    result: dict[str, DiskArray] = {}
    for sl in batches(len(data), batch_size):
        for name, value in zip(names, session.run(tensors, {input_name: data.x[sl]})):
            if name not in result:
                result[name] = store.new((1, len(data)) + value.shape[1:], DiskArray)
            result[name][:, sl] = value[None]
    return result


def set_thresholds(qcfs: onnx.ModelProto, thresholds: dict[str, float]) -> onnx.ModelProto:
    """A copy of ``qcfs`` with the thresholds ``<node>.lam`` of the named QCFS nodes replaced."""
    model = onnx.ModelProto.FromString(qcfs.SerializeToString())
    lam_names = {}
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == QCFS_OP and node.name in thresholds:
            lam_names[node.input[1]] = thresholds[node.name]
    for init in model.graph.initializer:
        if init.name in lam_names:
            init.CopyFrom(onnx.numpy_helper.from_array(
                np.array(lam_names.pop(init.name), np.float32), init.name))
    if lam_names:
        raise ValueError(f"QCFS thresholds not stored as initializers: {sorted(lam_names)}")
    return model


__all__ = ["REFINE", "SCALES", "ThresholdReport", "ThresholdSearch", "relu_reference", "search",
           "search_thresholds", "set_thresholds"]
