"""RMPE calibration: layer-by-layer correction of the residual membrane potential error.

For each IF layer ``l`` in topological order, with layers ``1..l-1`` already calibrated:

1. run the QCFS ANN once over the calibration set for the targets ``E[a_ANN]`` (all layers
   in one pass, running sums only);
2. run segment ``l`` (see :mod:`onnx_rmpe.runtime.segments`) on the cached calibrated
   spikes of the layers it reads, simulate the neuron (bit-identical numpy IF) and sum
   ``r_SNN = theta * N(T) / T``;
3. set ``v_init_l += T * (E[a_ANN] - E[r_SNN])`` per neuron (or per channel);
4. run the segment again, simulating the neuron with the new and the old ``v_init``, keep
   the new one only for neurons (channels) where it lowers ``|E[a_ANN] - E[r_SNN]|`` (the
   closed form assumes a linear response that fails for neurons whose input barely
   varies, as at T <= 2), and cache the layer's spikes (bool, on disk) for the layers
   that read them; drop caches no later layer needs.

Spike caches hold one bit per spike (:mod:`onnx_rmpe.runtime.spike_cache`); a cache's
file is deleted as soon as no later layer reads it, and the peak disk use is reported
(``CalibrationResult.spike_cache_bytes``).

Cost: one ANN pass, one pass of each segment (its input currents are kept for the second
simulation, up to ``CURRENT_CACHE_BYTES`` for one layer at a time) and two neuron
simulations per layer; memory:
running sums plus the spike caches of the open layers, memory-mapped from a temporary
directory, so RAM does not grow with the number of samples.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx_rmpe import validate
from onnx_rmpe.data import Dataset, check_fits, load_data
from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.modelio import (
    ensure_functions,
    get_metadata,
    is_qcfs,
    is_snn,
    neuron_attributes,
    read_model,
    save_model,
    set_metadata,
    to_graph,
    to_model,
)
from onnx_rmpe.outputs import WORK_PREFIX, check_outputs
from onnx_rmpe.passes.rmpe import set_initial_potentials
from onnx_rmpe.runtime.memory import cache_limit, plan_batch
from onnx_rmpe.runtime.neurons import DEFAULT_PHI, DOMAIN, IF_OP, QCFS_OP, if_reference
from onnx_rmpe.runtime.progress import progress_bar
from onnx_rmpe.runtime.segments import Layer, Segment, readout_segment, segments
from onnx_rmpe.runtime.session import Device, active_provider, batches, make_session
from onnx_rmpe.runtime.spike_cache import SpikeStore
from onnx_rmpe.runtime.statistics import expose_outputs

logger = logging.getLogger(__name__)

GRANULARITIES = ("neuron", "channel")
CLIP_LEVELS = 1 << 20
#: The check rejects a calibration only when it moves the SNN's outputs away from the
#: ANN's by more than this many standard errors of the paired per-sample change.
REJECT_Z = 3.0
#: Largest T of an SNN the check runs in its network-unrolled form (as ``evaluate`` does).
UNROLL_MAX_T = 64
#: Largest input-current cache of one layer (bytes, in memory, freed after the layer);
#: beyond it the second pass runs the segment again instead.
CURRENT_CACHE_BYTES = 256 << 20


@dataclass
class LayerReport:
    """Per-layer calibration figures (errors in activation units, mean over neurons)."""

    name: str
    neurons: int
    error_before: float
    error_after: float
    firing_rate: float
    mean_abs_v_init: float


@dataclass
class CalibrationResult:
    snn: onnx.ModelProto
    layers: list[LayerReport] = field(default_factory=list)
    T: int = 0
    samples: int = 0
    seconds: float = 0.0
    output_path: Path | None = None
    accepted: bool = True
    check: dict | None = None
    provider: str = ""
    #: Peak disk use of the spike caches (bytes; one bit per spike, freed when unused).
    spike_cache_bytes: int = 0

    def as_dict(self) -> dict:
        return {"T": self.T, "samples": self.samples, "seconds": round(self.seconds, 3),
                "spike_cache_bytes": self.spike_cache_bytes,
                "accepted": self.accepted, "check": self.check, "provider": self.provider,
                "layers": [vars(layer) for layer in self.layers]}


def _snn_settings(snn: onnx.ModelProto) -> tuple[int, float]:
    """T and phi of the (model-wide) IF neurons, read from the node attributes."""
    attrs = neuron_attributes(snn, IF_OP)
    if "T" not in attrs:
        raise ConversionError("the model has no IFNeuron node: calibrate a converted SNN")
    return int(attrs["T"]), float(attrs.get("phi", DEFAULT_PHI))


def calibrate(snn: onnx.ModelProto | str | os.PathLike, qcfs: onnx.ModelProto | str | os.PathLike,
              data, *, samples: int | None = None, batch_size: int = 128,
              granularity: str = "neuron", sweeps: int = 1, target_levels: int | None = None,
              check: bool = True, reference: onnx.ModelProto | None = None,
              output: str | os.PathLike | None = None,
              threads: int | None = None, device: Device = "cpu",
              providers: Sequence[str] | None = None, max_memory: int | None = None,
              progress: bool = False) -> CalibrationResult:
    """Calibrate the initial potentials of ``snn`` against its QCFS ANN on ``data``.

    ``snn`` and ``qcfs`` (models or paths) come from :func:`onnx_rmpe.convert`; layers are
    matched by node name. Any ``v_init`` already in ``snn`` is replaced. ``sweeps > 1``
    repeats the front-to-back sweep, each time measuring with the corrections found so far.
    ``target_levels``: the QCFS levels of the ANN target. Default: the model's own ``L``
    when its thresholds were trained (fine-tuned QCFS: that ANN *is* the model); for
    post-training thresholds ``max(L, T)``: at ``T > L`` the same thresholds with ``T``
    levels, the finer activation an SNN with ``T`` steps can express, so a long SNN is not
    pulled back to an arbitrary coarse quantization of the ReLU network.
    ``check``: compare, on the calibration data, how far the SNN's outputs are from the
    ``reference`` model's (default the QCFS ANN; ``convert`` passes the clip ANN for a
    ReLU model) before and after calibration, and reject the calibration only if it moves
    them significantly away (see :func:`_check`); calibration pulls the SNN towards the
    QCFS ANN, which cannot help when that ANN is itself poor (post-training QCFS at small
    L).
    ``output`` (if given) receives the calibrated SNN, written only on
    success; it may not be one of the inputs. ``max_memory`` (bytes; default half the
    available memory) bounds the batch size of the SNN runs.
    """
    device = list(providers) if providers else device
    start = time.perf_counter()
    validate.samples("samples", samples)
    validate.choice("granularity", granularity, GRANULARITIES)
    validate.integer("sweeps", sweeps, minimum=1)
    validate.batch_size(batch_size)
    validate.threads(threads)
    check_outputs({"output": output}, {k: v for k, v in (("snn", snn), ("qcfs", qcfs),
                                                         ("data", data))
                                       if isinstance(v, (str, os.PathLike))})
    snn, snn_name = read_model(snn)
    qcfs, qcfs_name = read_model(qcfs)
    _check_kinds(snn, snn_name, qcfs, qcfs_name)
    ds = load_data(data).head(samples)
    check_fits(ds, qcfs)
    T, phi = _snn_settings(snn)
    batch_size = plan_batch(snn, batch_size, max_memory, what=f"the SNN (T={T})")
    segs = segments(snn)
    levels = int(neuron_attributes(qcfs, QCFS_OP).get("levels", T))
    if target_levels is None:
        trained = get_metadata(qcfs).get("onnx_rmpe.thresholds_from") == "training"
        target_levels = levels if trained else max(levels, T)
    names = [s.layer.name for s in segs]
    targets, provider = _ann_means(qcfs_with_levels(qcfs, target_levels), ds, names,
                                   batch_size, threads, device)
    v_inits = {s.layer.name: np.zeros((), np.float32) for s in segs}
    with tempfile.TemporaryDirectory(prefix=WORK_PREFIX) as cache_dir, \
            progress_bar(progress, "RMPE") as bar:
        store = SpikeStore(cache_dir)
        readout = readout_segment(snn) if check else None
        for sweep in range(sweeps):
            # the last sweep also keeps the spikes the output reads: the check's calibrated
            # outputs come from them, not from another pass of the whole SNN
            reports, calibrated = _sweep(segs, ds, targets, v_inits, T, phi, granularity,
                                         batch_size,
                                         cache_limit(max_memory, CURRENT_CACHE_BYTES),
                                         threads, device, store, bar, sweep,
                                         readout if sweep == sweeps - 1 else None)
    _warn_silent(reports)
    graph = to_graph(snn)
    set_initial_potentials(graph, v_inits=v_inits)
    meta = get_metadata(snn)
    out = to_model(graph, metadata=meta)
    result = CalibrationResult(out, reports, T, len(ds), provider=provider,
                               spike_cache_bytes=store.peak_bytes)
    if check:
        out = _check(result, snn, reference or qcfs, ds, batch_size, threads, device,
                     calibrated)
    for key, value in {"onnx_rmpe.rmpe": "layerwise" if result.accepted else "rejected",
                       "onnx_rmpe.rmpe_T": str(T),
                       "onnx_rmpe.rmpe_samples": str(len(ds)),
                       "onnx_rmpe.rmpe_granularity": granularity,
                       "onnx_rmpe.rmpe_sweeps": str(sweeps),
                       "onnx_rmpe.rmpe_target_levels": str(target_levels)}.items():
        set_metadata(out, key, value)
    set_metadata(out, "onnx_rmpe.rmpe_layers", json.dumps(  # per-layer figures, for inspect
        [{k: round(v, 6) if isinstance(v, float) else v for k, v in vars(layer).items()}
         for layer in result.layers]))
    result.snn, result.seconds = out, time.perf_counter() - start
    if output is not None:
        result.output_path = save_model(out, output)
    logger.info("RMPE calibration of %d layer(s) on %d samples, T=%d, %s: %.1fs, spike caches "
                "%.1f MiB on disk at the peak", len(segs), len(ds), T, result.provider,
                result.seconds, result.spike_cache_bytes / 2**20)
    return result


def _check_kinds(snn: onnx.ModelProto, snn_name: str, qcfs: onnx.ModelProto,
                 qcfs_name: str) -> None:
    if not is_snn(snn):
        raise ConversionError(f"'{snn_name}' is not a multi-step SNN converted by onnx-rmpe (no "
                              "IFNeuron node); calibrate the output of `onnx-rmpe convert`")
    if not is_qcfs(qcfs):
        what = "an SNN" if is_snn(qcfs) else "not a QCFS ANN (it has no QCFS node)"
        raise ConversionError(f"the QCFS model '{qcfs_name}' is {what}; give the QCFS ANN the "
                              "SNN was converted from (`onnx-rmpe convert --save-qcfs`)")
def _warn_silent(reports: list[LayerReport]) -> None:
    """Warn about spiking layers that never fired on the calibration data."""
    silent = [r.name for r in reports if r.firing_rate == 0.0]
    if silent:
        shown = ", ".join(silent[:5]) + (", ..." if len(silent) > 5 else "")
        logger.warning("%d spiking layer(s) never fired on the calibration data (%s): every "
                       "later layer sees no input from them; check the weights, the input "
                       "scale and the thresholds", len(silent), shown)


def _check(result: CalibrationResult, before: onnx.ModelProto, reference: onnx.ModelProto,
           ds: Dataset, batch_size: int, threads: int | None, device: Device,
           calibrated: np.ndarray | None = None) -> onnx.ModelProto:
    """Keep the calibrated SNN unless it is significantly farther from the ANN than before.

    The measure is continuous and paired: per sample ``i``, the change
    ``d_i = |y_after_i - y_ref_i|^2 - |y_before_i - y_ref_i|^2`` of the squared distance of
    the first output to the reference ANN's. The calibration is rejected only when the mean
    change is positive by more than ``REJECT_Z`` standard errors (``std(d) / sqrt(n)``), so
    the decision does not flip on a handful of samples or on float rounding between
    machines: a calibration that is about as good as none is kept (it is the method), one
    that is clearly worse is not. Top-1 agreement with the labels (or with the reference's
    classes) is reported, not decided on: on a few hundred samples it moves in steps of
    ``1/n`` and is too coarse to decide by.

    ``calibrated``: the calibrated SNN's outputs when the sweep already computed them from
    its spike caches (else the calibrated SNN runs here); the SNN before calibration runs in
    its network-unrolled form for T <= 64 (the same outputs as the multi-step form, faster).
    """
    target = _outputs(_fast_form(reference), ds, batch_size, threads, device)
    classes = ds.y if ds.y is not None else target.argmax(-1)
    outputs = {"before": _outputs(_fast_form(before), ds, batch_size, threads, device),
               "after": calibrated if calibrated is not None else
               _outputs(_fast_form(result.snn), ds, batch_size, threads, device)}
    sq = {name: ((out - target).astype(np.float64) ** 2).reshape(len(out), -1).sum(1)
          for name, out in outputs.items()}
    mse = {name: float(v.mean() / max(1, target[0].size)) for name, v in sq.items()}
    diff = sq["after"] - sq["before"]
    stderr = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    z = float(diff.mean() / stderr) if stderr > 0 else (np.inf if diff.mean() > 0 else 0.0)
    agree = {name: float((out.argmax(-1) == classes).mean()) for name, out in outputs.items()}
    result.accepted = not z > REJECT_Z
    result.check = {"metric": "mean squared error to the ANN outputs", **mse,
                    "z": z if np.isfinite(z) else None, "reject_z": REJECT_Z,
                    "agreement_with": "labels" if ds.y is not None else "ANN",
                    "agreement_before": agree["before"], "agreement_after": agree["after"]}
    if result.accepted:
        return result.snn
    logger.warning("RMPE calibration moved the SNN significantly away from the ANN on the "
                   "calibration data (output error %.4g -> %.4g, %.1f standard errors): "
                   "keeping the potentials the SNN had before. Fine-tune the QCFS ANN "
                   "(onnx-rmpe finetune) or calibrate with more samples.",
                   mse["before"], mse["after"], z)
    return before


def _fast_form(snn: onnx.ModelProto) -> onnx.ModelProto:
    """The network-unrolled form of a multi-step SNN with T <= 64 (as ``evaluate`` runs it);
    any other model as it is."""
    T = int(get_metadata(snn).get("onnx_rmpe.T", 0))
    if not is_snn(snn) or not 1 <= T <= UNROLL_MAX_T:
        return snn
    from onnx_rmpe.forms import snn_to_unrolled

    return snn_to_unrolled(snn)


def _outputs(model: onnx.ModelProto, ds: Dataset, batch_size: int, threads: int | None,
             device: Device) -> np.ndarray:
    """The first output of ``model`` over ``ds`` (for an SNN: averaged over the steps)."""
    session = make_session(model, threads=threads, device=device)
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    return np.concatenate([session.run([out], {name: ds.x[sl]})[0]
                           for sl in batches(len(ds), batch_size)])


def qcfs_with_levels(qcfs: onnx.ModelProto, levels: int) -> onnx.ModelProto:
    """The QCFS model with every QCFS node at ``levels`` levels (thresholds unchanged).

    With a very large ``levels`` (``CLIP_LEVELS``) it is the clip ANN ``clip(z, 0, lam)``:
    the ReLU network with its activations capped at the thresholds.
    """
    if levels < 1:
        raise OptionError("target_levels", f"must be at least 1, got {levels}")
    model = onnx.ModelProto.FromString(qcfs.SerializeToString())
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == QCFS_OP:
            for attr in node.attribute:
                if attr.name == "levels":
                    attr.i = levels
    return ensure_functions(model)


def _ann_means(qcfs: onnx.ModelProto, ds: Dataset, names: list[str], batch_size: int,
               threads: int | None, device: Device) -> tuple[dict[str, np.ndarray], str]:
    """E[a_ANN] per neuron for every QCFS node (matched to IF layers by node name)."""
    nodes = {n.name: n.output[0] for n in qcfs.graph.node}
    missing = [n for n in names if n not in nodes]
    if missing:
        raise ConversionError(f"the QCFS model has no node named {', '.join(missing)}: "
                              "give the QCFS model the SNN was converted from")
    outputs = [nodes[n] for n in names]
    session = make_session(expose_outputs(qcfs, outputs), threads=threads, device=device)
    input_name = session.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    for sl in batches(len(ds), batch_size):
        for name, value in zip(names, session.run(outputs, {input_name: ds.x[sl]})):
            total = value.sum(0, dtype=np.float64)
            sums[name] = sums[name] + total if name in sums else total
    return {name: s / len(ds) for name, s in sums.items()}, active_provider(session)


def _sweep(segs: list[Segment], ds: Dataset, targets, v_inits, T, phi, granularity, batch_size,
           current_bytes, threads, device, store, bar, sweep,
           readout: Segment | None = None) -> tuple[list[LayerReport], np.ndarray | None]:
    """One front-to-back sweep; with ``readout`` also the SNN's (first) output, computed by
    the readout segment on the calibrated spikes."""
    caches: dict[str, np.ndarray] = {}
    thetas = {s.layer.spikes: s.layer.theta for s in segs}
    last_use = {name: i for i, s in enumerate(segs) for name in s.spike_inputs}
    if readout is not None:
        last_use.update({name: len(segs) for name in readout.spike_inputs})
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
    outputs = None
    if readout is not None:
        session = make_session(readout.model, threads=threads, device=device)
        feed = _Feeder(readout, session, ds, caches, thetas, T)
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
            feed[name] = (spikes.astype(np.float32) * self.thetas[name]).reshape(
                (-1,) + spikes.shape[2:])
        return feed

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
