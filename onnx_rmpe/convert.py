"""The conversion pipeline: ANN (ONNX) -> QCFS ANN -> IF-neuron SNN (ONNX)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx_rmpe import __version__
from onnx_rmpe.calibrate import CLIP_LEVELS, CalibrationResult, calibrate, qcfs_with_levels
from onnx_rmpe.data import Dataset, check_fits, load_data
from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.modelio import (
    default_opset,
    get_metadata,
    is_qcfs,
    prepare,
    read_model,
    save_model,
    set_metadata,
    to_graph,
    to_model,
)
from onnx_rmpe.passes.base import run_passes
from onnx_rmpe.passes.fold_batchnorm import fold_batchnorm
from onnx_rmpe.passes.maxpool_reorder import maxpool_reorder
from onnx_rmpe.passes.normalize import normalize
from onnx_rmpe.passes.qcfs_to_if import qcfs_to_if
from onnx_rmpe.passes.recognize_qcfs import recognize_qcfs
from onnx_rmpe.passes.relu_to_qcfs import activation_sites, qcfs_nodes, relu_to_qcfs
from onnx_rmpe.passes.support import check_supported
from onnx_rmpe.runtime.neurons import DEFAULT_PHI
from onnx_rmpe.runtime.session import Device
from onnx_rmpe.runtime.statistics import positive_percentiles
from onnx_rmpe.runtime.streaming import snn_to_streaming

logger = logging.getLogger(__name__)

MODES = ("multistep", "streaming")


@dataclass
class ConversionResult:
    """What :func:`convert` produced: the SNN, the QCFS ANN it came from, and a report."""

    snn: onnx.ModelProto
    qcfs: onnx.ModelProto
    T: int
    levels: int
    thresholds: dict[str, float]
    output_path: Path | None = None
    qcfs_path: Path | None = None
    calibration: CalibrationResult | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _check_options(T: int, levels: int, percentile: float, calib_samples: int | None,
                   batch_size: int) -> None:
    if T < 1:
        raise OptionError("--T", f"the number of time steps must be at least 1, got {T}")
    if levels < 1:
        raise OptionError("--levels", f"must be at least 1, got {levels}")
    if not 0 < percentile <= 100:
        raise OptionError("--percentile", f"must be in (0, 100], got {percentile}")
    if calib_samples is not None and calib_samples < 1:
        raise OptionError("--calib-samples", f"must be at least 1, got {calib_samples}")
    if batch_size < 1:
        raise OptionError("--batch-size", f"must be at least 1, got {batch_size}")


def build_qcfs(model: onnx.ModelProto, data: Dataset | None, *, levels: int = 8,
               percentile: float = 99.9, batch_size: int = 128, threads: int | None = None,
               device: Device = "cpu", source: str = "<model>") -> tuple[onnx.ModelProto, dict]:
    """Normalize a (ReLU or QCFS) ANN and return the QCFS ANN with its thresholds."""
    prepared = prepare(model, source)
    graph = run_passes(to_graph(prepared), [
        ("normalize", normalize), ("fold_batchnorm", fold_batchnorm),
        ("recognize_qcfs", recognize_qcfs), ("check_supported", check_supported),
    ])
    if len(graph.inputs) != 1:
        names = ", ".join(t.name for t in graph.inputs)
        raise ConversionError(f"model '{source}' has {len(graph.inputs)} inputs ({names}); "
                              "onnx-rmpe converts models with exactly one (batch-first) input")
    sites = activation_sites(graph)
    trained = qcfs_nodes(graph)
    if trained:  # a fine-tuned QCFS model: its own L wins (one L per model)
        found = {int(n.attrs.get("levels", levels)) for n in trained}
        if len(found) > 1:
            raise ConversionError(f"model '{source}' has QCFS layers with different levels "
                                  f"{sorted(found)}; one L per model is supported")
        levels = found.pop()
    if not sites and not trained:
        raise ConversionError(f"model '{source}' has no ReLU-like activation (Relu, Clip(0, m), "
                              "Max(x, 0)) or QCFS node: there is nothing to turn into neurons")
    thresholds = {}
    if sites:
        if data is None:
            raise OptionError("--calib", "the model has ReLU activations, so QCFS thresholds "
                                         "need calibration data (an .npz with array 'x')")
        relu_model = to_model(graph.copy(), keep_shapes=True)
        check_fits(data, relu_model)
        pct = positive_percentiles(relu_model, data.x, [s.pre_activation for s in sites],
                                   percentile=percentile, batch_size=batch_size,
                                   threads=threads, device=device)
        thresholds = {s.node: _usable(pct[s.pre_activation], s) for s in sites}
    graph = run_passes(graph, [
        ("relu_to_qcfs", lambda g: relu_to_qcfs(g, thresholds=thresholds, levels=levels)),
        ("maxpool_reorder", maxpool_reorder),
    ])
    for node in qcfs_nodes(graph):
        thresholds[node.name] = float(np.asarray(node.inputs[1].values))
    qcfs = to_model(graph, keep_shapes=True, metadata={
        **get_metadata(prepared), "onnx_rmpe.kind": "qcfs", "onnx_rmpe.version": __version__,
        "onnx_rmpe.levels": str(levels), "onnx_rmpe.percentile": str(percentile),
        "onnx_rmpe.thresholds_from": "percentile" if sites else "training"})
    return qcfs, thresholds


def _usable(value: float, site) -> float:
    if np.isfinite(value) and value > 0:
        return value
    fallback = site.cap if site.cap is not None else 1.0
    logger.warning("activation '%s' never fired on the calibration data; threshold set to %g",
                   site.node, fallback)
    return fallback


def qcfs_to_snn(qcfs: onnx.ModelProto, *, T: int, phi: float = DEFAULT_PHI) -> onnx.ModelProto:
    """The multi-step SNN of a QCFS model (uncalibrated: ``v_init = 0``)."""
    graph = run_passes(to_graph(qcfs), [("qcfs_to_if", lambda g: qcfs_to_if(g, T=T, phi=phi))])
    meta = get_metadata(qcfs)
    meta.update({"onnx_rmpe.kind": "snn", "onnx_rmpe.T": str(T), "onnx_rmpe.phi": str(phi),
                 "onnx_rmpe.rmpe": "none"})
    return to_model(graph, opset=default_opset(qcfs), metadata=meta)


def convert(model: str | os.PathLike | onnx.ModelProto, *, T: int, calib=None,
            output: str | os.PathLike | None = None, levels: int = 8, percentile: float = 99.9,
            calib_samples: int | None = 512, batch_size: int = 128, rmpe: bool = True,
            rmpe_granularity: str = "neuron", rmpe_sweeps: int = 1,
            mode: str = "multistep", finetune_data=None, epochs: int = 3,
            finetune_lr: float | None = None, seed: int = 0,
            save_qcfs: str | os.PathLike | None = None,
            threads: int | None = None, device: Device = "cpu",
            providers: Sequence[str] | None = None,
            progress: bool = False) -> ConversionResult:
    """Convert an ONNX ANN into a multi-step IF-neuron SNN, RMPE-calibrated for ``T``.

    ``calib`` (path, array, ``(x, y)`` or :class:`Dataset`; the first ``calib_samples``
    are used) gives the QCFS thresholds of ReLU layers and the RMPE calibration; a model
    that is already QCFS needs it only for RMPE (``rmpe=False`` skips it). ``mode`` is
    ``multistep`` (all T steps in one call) or ``streaming`` (one step per call, membrane
    potentials as state inputs/outputs; see :mod:`onnx_rmpe.runtime.streaming`).
    ``finetune_data`` (labelled, or unlabelled: then it distils) runs stage 1 first: QCFS
    fine-tuning for ``epochs`` epochs at ``finetune_lr`` (None: the recipe's default;
    :func:`onnx_rmpe.finetune.finetune`, needs torch); its first ``calib_samples`` inputs
    calibrate RMPE when ``calib`` is not given. ``output`` (if
    given) receives the SNN; ``save_qcfs`` the QCFS ANN. Nothing is written unless the
    whole conversion succeeds. ``device`` (``cpu`` or ``cuda``, which needs
    onnxruntime-gpu) or ``providers`` (onnxruntime provider names, which win) choose where
    thresholds and calibration run; an unavailable provider falls back to CPU with a
    warning, and ``result.calibration.provider`` says which one ran.
    """
    device = list(providers) if providers else device
    start = time.perf_counter()
    _check_options(T, levels, percentile, calib_samples, batch_size)
    if output is not None and not isinstance(model, onnx.ModelProto) \
            and Path(output).resolve() == Path(model).resolve():
        raise OptionError("-o/--output", f"'{output}' is the input model; choose another path")
    if mode not in MODES:
        raise OptionError("--mode", f"'{mode}' is not one of {', '.join(MODES)}")
    if calib is None and finetune_data is not None:
        calib = finetune_data
    if rmpe and calib is None:
        raise OptionError("--calib", "RMPE calibration needs calibration data; give --calib "
                                     "(an .npz with array 'x') or turn it off with --no-rmpe")
    proto, source = read_model(model)
    if finetune_data is not None:
        from onnx_rmpe.finetune import finetune

        tuned = finetune(proto, finetune_data, levels=levels, epochs=epochs, lr=finetune_lr,
                         batch_size=batch_size, percentile=percentile, seed=seed,
                         progress=progress)
        proto, levels = tuned.model, tuned.levels
    data = load_data(calib).head(calib_samples) if calib is not None else None
    qcfs, thresholds = build_qcfs(proto, data, levels=levels, percentile=percentile,
                                  batch_size=batch_size, threads=threads, device=device,
                                  source=source)
    snn = qcfs_to_snn(qcfs, T=T)
    calibration = None
    if rmpe:
        calibration = calibrate(snn, qcfs, data, batch_size=batch_size,
                                granularity=rmpe_granularity, sweeps=rmpe_sweeps,
                                reference=qcfs if is_qcfs(proto) else
                                qcfs_with_levels(qcfs, CLIP_LEVELS),
                                threads=threads, device=device, progress=progress)
        snn = calibration.snn
    if data is not None:
        set_metadata(snn, "onnx_rmpe.calib_samples", str(len(data)))
    set_metadata(snn, "onnx_rmpe.thresholds", json.dumps(thresholds))
    if mode == "streaming":
        snn = snn_to_streaming(snn)
    result = ConversionResult(snn, qcfs, T, levels, thresholds, calibration=calibration)
    if save_qcfs is not None:
        result.qcfs_path = save_model(qcfs, save_qcfs)
    if output is not None:
        result.output_path = save_model(snn, output)
    result.seconds = time.perf_counter() - start
    logger.info("converted %s: %d spiking layer(s), T=%d, L=%d in %.1fs", source,
                len(thresholds), T, levels, result.seconds)
    return result


__all__ = ["ConversionResult", "build_qcfs", "convert", "qcfs_to_snn"]
