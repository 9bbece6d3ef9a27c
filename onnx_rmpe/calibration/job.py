"""The ``calibrate`` job: load, check, sweep, check again, save.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import onnx

from onnx_rmpe import validate
from onnx_rmpe.calibration.check import _check, _warn_silent
from onnx_rmpe.calibration.results import CalibrationResult
from onnx_rmpe.calibration.sweep import CURRENT_CACHE_BYTES, SweepSettings, _sweep
from onnx_rmpe.calibration.targets import _ann_means, qcfs_with_levels
from onnx_rmpe.data import check_fits, load_data
from onnx_rmpe.errors import ConversionError
from onnx_rmpe.modelio import (
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
from onnx_rmpe.runtime.memory import cache_limit, plan_batch, plan_batch_within
from onnx_rmpe.runtime.neurons import DEFAULT_PHI, IF_OP, QCFS_OP
from onnx_rmpe.runtime.options import RuntimeOptions
from onnx_rmpe.runtime.progress import progress_bar
from onnx_rmpe.runtime.ray_engine import ENGINES, require_ray
from onnx_rmpe.runtime.segments import readout_segment, segments
from onnx_rmpe.runtime.session import Device
from onnx_rmpe.runtime.spike_cache import SpikeStore

logger = logging.getLogger(__name__)


GRANULARITIES = ("neuron", "channel")


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
              runtime: RuntimeOptions | None = None,
              progress: bool = False,
              uncalibrated_outputs: np.ndarray | None = None,
              engine: str = "local") -> CalibrationResult:
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
    available memory) bounds the batch size of the SNN runs. ``uncalibrated_outputs``: the
    first output of ``snn`` on the first ``samples`` of ``data`` when the caller has it
    (``convert`` takes it from the threshold search), so the check does not run ``snn``.
    ``engine``: where the ANN-target pass runs, ``local`` (this process) or ``ray`` (Ray
    Data ``map_batches`` over onnxruntime sessions on the connected cluster, or the one
    ``RAY_ADDRESS`` names, else a local one; needs ``onnx-rmpe[ray]``): the same targets,
    so the same potentials, bit for bit.
    """
    batch_size, threads, device, max_memory = RuntimeOptions.resolve(
        runtime, batch_size=batch_size, threads=threads, device=device, providers=providers,
        max_memory=max_memory)
    start = time.perf_counter()
    validate.samples("samples", samples)
    validate.choice("granularity", granularity, GRANULARITIES)
    validate.integer("sweeps", sweeps, minimum=1)
    validate.batch_size(batch_size)
    validate.threads(threads)
    validate.choice("engine", engine, ENGINES)
    if engine == "ray":
        require_ray()
    check_outputs({"output": output}, {k: v for k, v in (("snn", snn), ("qcfs", qcfs),
                                                         ("data", data))
                                       if isinstance(v, (str, os.PathLike))})
    snn, snn_name = read_model(snn)
    qcfs, qcfs_name = read_model(qcfs)
    _check_kinds(snn, snn_name, qcfs, qcfs_name)
    ds = load_data(data).head(samples)
    check_fits(ds, qcfs)
    if uncalibrated_outputs is not None and len(uncalibrated_outputs) != len(ds):
        raise ConversionError(f"uncalibrated_outputs has {len(uncalibrated_outputs)} rows for "
                              f"{len(ds)} calibration samples; give the outputs of the same "
                              "samples or leave it out")
    T, phi = _snn_settings(snn)
    # the ANN targets (float64 sums per batch) at the batch planned for the SNN alone, as
    # before; the sweep and the check (batch-independent figures) in what the process leaves
    batch_size = plan_batch(snn, batch_size, max_memory, what=f"the SNN (T={T})")
    snn_batch = plan_batch_within(snn, batch_size, max_memory, what=f"the SNN (T={T})",
                                  reserved=cache_limit(max_memory, CURRENT_CACHE_BYTES))
    segs = segments(snn)
    levels = int(neuron_attributes(qcfs, QCFS_OP).get("levels", T))
    if target_levels is None:
        trained = get_metadata(qcfs).get("onnx_rmpe.thresholds_from") == "training"
        target_levels = levels if trained else max(levels, T)
    names = [s.layer.name for s in segs]
    targets, provider = _ann_means(qcfs_with_levels(qcfs, target_levels), ds, names,
                                   batch_size, threads, device, engine)
    v_inits = {s.layer.name: np.zeros((), np.float32) for s in segs}
    with tempfile.TemporaryDirectory(prefix=WORK_PREFIX) as cache_dir, \
            progress_bar(progress, "RMPE") as bar:
        store = SpikeStore(cache_dir)
        readout = readout_segment(snn) if check else None
        for sweep in range(sweeps):
            settings = SweepSettings(T, phi, granularity, snn_batch,
                                     cache_limit(max_memory, CURRENT_CACHE_BYTES),
                                     threads, device)
            # the last sweep also keeps the spikes the output reads: the check's calibrated
            # outputs come from them, not from another pass of the whole SNN
            reports, calibrated = _sweep(segs, ds, targets, v_inits, settings, store, bar,
                                         sweep, readout if sweep == sweeps - 1 else None)
    _warn_silent(reports)
    graph = to_graph(snn)
    set_initial_potentials(graph, v_inits=v_inits)
    meta = get_metadata(snn)
    out = to_model(graph, metadata=meta)
    result = CalibrationResult(out, reports, T, len(ds), provider=provider,
                               spike_cache_bytes=store.peak_bytes)
    if check:
        out = _check(result, snn, reference or qcfs, ds, snn_batch, threads, device,
                     calibrated, uncalibrated_outputs)
    if not result.accepted and meta.get("onnx_rmpe.rmpe") == "layerwise":
        # a rejected recalibration keeps the earlier calibration: say so, keep its record
        set_metadata(out, "onnx_rmpe.rmpe_recalibration",
                     f"rejected on {len(ds)} samples: kept the earlier calibration")
        result.snn, result.seconds = out, time.perf_counter() - start
        if output is not None:
            result.output_path = save_model(out, output)
        return result
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
