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

from onnx_rmpe import __version__, validate
from onnx_rmpe.calibrate import CLIP_LEVELS, CalibrationResult, calibrate, qcfs_with_levels
from onnx_rmpe.data import Dataset, check_fits, load_data
from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.modelio import (
    default_opset,
    get_metadata,
    is_qcfs,
    is_snn,
    is_streaming,
    prepare,
    read_model,
    save_models,
    set_metadata,
    to_graph,
    to_model,
)
from onnx_rmpe.outputs import check_outputs
from onnx_rmpe.passes.base import run_passes
from onnx_rmpe.passes.fold_batchnorm import fold_batchnorm
from onnx_rmpe.passes.fold_batchnorm_forward import fold_batchnorm_forward
from onnx_rmpe.passes.maxpool_reorder import maxpool_reorder
from onnx_rmpe.passes.normalize import normalize
from onnx_rmpe.passes.qcfs_to_if import qcfs_to_if
from onnx_rmpe.passes.readout import sink_readout
from onnx_rmpe.passes.recognize_qcfs import recognize_qcfs
from onnx_rmpe.passes.relu_to_qcfs import (
    activation_sites,
    output_activations,
    qcfs_nodes,
    relu_to_qcfs,
)
from onnx_rmpe.passes.simplify_ops import simplify_ops
from onnx_rmpe.passes.support import check_supported
from onnx_rmpe.refine import MAX_T as REFINE_MAX_T
from onnx_rmpe.refine import RefineReport, refine_after_rmpe, refine_before_rmpe
from onnx_rmpe.runtime.memory import default_budget, plan_batch
from onnx_rmpe.runtime.neurons import DEFAULT_PHI
from onnx_rmpe.runtime.session import Device
from onnx_rmpe.runtime.statistics import positive_percentiles
from onnx_rmpe.runtime.streaming import snn_to_streaming
from onnx_rmpe.thresholds import ThresholdReport, search_thresholds, set_thresholds

logger = logging.getLogger(__name__)

MODES = ("multistep", "streaming", "chunked", "unrolled")
#: QCFS levels of a ReLU model when none are given (a trained QCFS model keeps its own).
DEFAULT_LEVELS = 8
#: How ReLU layers get their thresholds: ``search`` (per layer, for the target T, from the
#: percentile start; see :mod:`onnx_rmpe.thresholds`) or ``percentile`` (the start alone);
#: ``refine`` (the default) is ``search`` followed by :mod:`onnx_rmpe.refine` (thresholds
#: moved by the error at the network output, before and after RMPE).
THRESHOLDS = ("refine", "search", "percentile")


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
    target_path: Path | None = None
    calibration: CalibrationResult | None = None
    seconds: float = 0.0
    threshold_search: list[ThresholdReport] = field(default_factory=list)
    #: ``thresholds="refine"``: the output-error refinements (before and after RMPE).
    threshold_refine: list[RefineReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: object | None = None  # ReportResult with report_dir (onnx_rmpe.report)
    #: ReLU-like nodes on a graph output, applied to the averaged outputs (not neurons).
    readout_activations: list[str] = field(default_factory=list)


def _check_options(T, levels, percentile, calib_samples, batch_size, threads, mode,
                   rmpe_sweeps) -> None:
    validate.time_steps("T", T)
    validate.integer("levels", levels, minimum=1, optional=True)
    validate.number("percentile", percentile, minimum=0, maximum=100, exclusive_minimum=True)
    validate.samples("calib_samples", calib_samples)
    validate.batch_size(batch_size)
    validate.threads(threads)
    validate.choice("mode", mode, MODES)
    validate.integer("rmpe_sweeps", rmpe_sweeps, minimum=1)


def refuse_snn(model: onnx.ModelProto, source: str) -> None:
    """An SNN written by onnx-rmpe cannot be converted again: say so, and what to do."""
    if is_snn(model) or is_streaming(model):
        T = get_metadata(model).get("onnx_rmpe.T", "?")
        raise ConversionError(f"model '{source}' is already a spiking network converted by "
                              f"onnx-rmpe (T={T}); convert the ANN it came from, or recalibrate "
                              "this one with `onnx-rmpe calibrate`")


def refuse_non_float32(model: onnx.ModelProto, source: str) -> None:
    """The converter computes in float32: refuse float16/bfloat16/double models clearly."""
    other = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
             onnx.TensorProto.DOUBLE: "float64"}
    found = {other[v.type.tensor_type.elem_type] for v in model.graph.input
             if v.type.tensor_type.elem_type in other}
    found |= {other[t.data_type] for t in model.graph.initializer if t.data_type in other}
    if found:
        raise ConversionError(f"model '{source}' computes in {', '.join(sorted(found))}; "
                              "onnx-rmpe converts float32 models: export it in float32 "
                              "(e.g. model.float() in PyTorch before torch.onnx.export)")


def build_qcfs(model: onnx.ModelProto, data: Dataset | None, *, levels: int | None = None,
               percentile: float = 99.9, batch_size: int = 128, threads: int | None = None,
               device: Device = "cpu", source: str = "<model>",
               max_memory: int | None = None) -> tuple[onnx.ModelProto, dict]:
    """Normalize a (ReLU or QCFS) ANN and return the QCFS ANN with its thresholds."""
    prepared = prepare(model, source)
    graph = run_passes(to_graph(prepared), [
        ("normalize", normalize), ("simplify_ops", simplify_ops),
        ("sink_readout", sink_readout), ("fold_batchnorm", fold_batchnorm),
        ("fold_batchnorm_forward", fold_batchnorm_forward),
        ("recognize_qcfs", recognize_qcfs), ("check_supported", check_supported),
    ])
    if len(graph.inputs) != 1:
        names = ", ".join(t.name for t in graph.inputs)
        raise ConversionError(f"model '{source}' has {len(graph.inputs)} inputs ({names}); "
                              "onnx-rmpe converts models with exactly one (batch-first) input")
    sites = activation_sites(graph)
    readout = output_activations(graph)
    for name in readout:
        logger.info("activation '%s' on a graph output is part of the readout: applied to "
                    "the time-averaged outputs, not a spiking layer", name)
    trained = qcfs_nodes(graph)
    if trained:  # a fine-tuned QCFS model: its own L wins (one L per model)
        found = {int(n.attrs.get("levels", levels or DEFAULT_LEVELS)) for n in trained}
        if len(found) > 1:
            raise ConversionError(f"model '{source}' has QCFS layers with different levels "
                                  f"{sorted(found)}; one L per model is supported")
        if levels is not None and levels not in found:
            logger.warning("model '%s' has trained QCFS layers with L=%d; levels=%d is ignored "
                           "(thresholds were trained for that L)", source, next(iter(found)),
                           levels)
        levels = found.pop()
    levels = DEFAULT_LEVELS if levels is None else levels
    if not sites and not trained:
        raise ConversionError(f"model '{source}' has no ReLU-like activation (Relu, Clip(0, m), "
                              "Max(x, 0)) or QCFS node: there is nothing to turn into neurons")
    thresholds = {}
    if sites:
        if data is None:
            raise OptionError("calib", "the model has ReLU activations, so QCFS thresholds "
                                         "need calibration data (an .npz with array 'x')")
        relu_model = to_model(graph.copy(), keep_shapes=True)
        check_fits(data, relu_model)
        batch_size = plan_batch(relu_model, batch_size, max_memory, what="the ANN")
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
        "onnx_rmpe.thresholds_from": "percentile" if sites else "training",
        **({"onnx_rmpe.readout_activations": ",".join(readout)} if readout else {})})
    return qcfs, thresholds


#: Thresholds outside this range are reported: usually uninitialised or constant weights.
SANE_THRESHOLDS = (1e-6, 1e6)


def _usable(value: float, site) -> float:
    if np.isfinite(value) and value > 0:
        low, high = SANE_THRESHOLDS
        if not low <= value <= high:
            logger.warning("activation '%s': threshold %.3g is outside [%g, %g]; are the "
                           "weights real (not placeholders or constants)?", site.node, value,
                           low, high)
        return value
    fallback = site.cap if site.cap is not None else 1.0
    logger.warning("activation '%s' never fired on the calibration data; threshold set to %g",
                   site.node, fallback)
    return fallback


def target_path_for(path: str | os.PathLike) -> Path:
    """Where ``--save-qcfs PATH`` writes the RMPE target ANN: ``PATH`` stem + ``.target.onnx``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + ".target.onnx")


def _anns_to_save(qcfs: onnx.ModelProto, calibration: CalibrationResult | None, levels: int,
                  path: str | os.PathLike) -> list[tuple[onnx.ModelProto, Path, str]]:
    """The QCFS ANN (L levels) and, when RMPE aimed at another ANN, that target too.

    RMPE calibrates post-training thresholds against the same network with ``max(L, T)``
    levels; that ANN, not the L-level one, is what the SNN approximates for ``T > L``.
    """
    qcfs = onnx.ModelProto.FromString(qcfs.SerializeToString())
    set_metadata(qcfs, "onnx_rmpe.role", f"QCFS ANN, L={levels} (thresholds of the SNN)")
    items = [(qcfs, Path(path), "save_qcfs")]
    target_levels = None
    if calibration is not None:
        found = get_metadata(calibration.snn).get("onnx_rmpe.rmpe_target_levels")
        target_levels = int(found) if found else None
    if target_levels is not None and target_levels != levels:
        target = qcfs_with_levels(qcfs, target_levels)
        set_metadata(target, "onnx_rmpe.levels", str(target_levels))
        set_metadata(target, "onnx_rmpe.role", f"RMPE target: QCFS ANN, L={target_levels} "
                                               "(the ANN the SNN was calibrated against)")
        items.append((target, target_path_for(path), "save_qcfs"))
    return items


def qcfs_to_snn(qcfs: onnx.ModelProto, *, T: int, phi: float = DEFAULT_PHI,
                form: str | None = None) -> onnx.ModelProto:
    """The multi-step SNN of a QCFS model (uncalibrated: ``v_init = 0``).

    ``form``: the IF body (``unrolled``/``scan``; default by T), same spikes either way.
    """
    graph = run_passes(to_graph(qcfs), [
        ("qcfs_to_if", lambda g: qcfs_to_if(g, T=T, phi=phi, form=form))])
    meta = get_metadata(qcfs)
    meta.update({"onnx_rmpe.kind": "snn", "onnx_rmpe.T": str(T), "onnx_rmpe.phi": str(phi),
                 "onnx_rmpe.rmpe": "none"})
    return to_model(graph, opset=default_opset(qcfs), metadata=meta)


def convert(model: str | os.PathLike | onnx.ModelProto, *, T: int, calib=None,
            output: str | os.PathLike | None = None, levels: int | None = None,
            percentile: float = 99.9,
            calib_samples: int | None = 512, batch_size: int = 128, rmpe: bool = True,
            rmpe_granularity: str = "neuron", rmpe_sweeps: int = 1,
            thresholds: str = "refine", mode: str = "multistep", chunk: int | None = None,
            finetune_data=None, epochs: int = 3,
            finetune_lr: float | None = None, seed: int = 0,
            save_qcfs: str | os.PathLike | None = None,
            threads: int | None = None, device: Device = "cpu",
            providers: Sequence[str] | None = None, max_memory: int | None = None,
            progress: bool = False,
            report_dir: str | os.PathLike | None = None) -> ConversionResult:
    """Convert an ONNX ANN into a multi-step IF-neuron SNN, RMPE-calibrated for ``T``.

    ``calib`` (path, array, ``(x, y)`` or :class:`Dataset`; the first ``calib_samples``
    are used) gives the QCFS thresholds of ReLU layers and the RMPE calibration; a model
    that is already QCFS needs it only for RMPE (``rmpe=False`` skips it). ``mode`` is
    ``multistep`` (all T steps in one call) or ``streaming`` (one step per call, membrane
    potentials as state inputs/outputs; see :mod:`onnx_rmpe.runtime.streaming`) or
    ``chunked`` (``chunk`` steps per call with the state carried, see
    :mod:`onnx_rmpe.forms`; without ``chunk``, the largest divisor of T whose activations
    at batch ``batch_size`` fit ``max_memory``) or ``unrolled`` (the network written
    T times over, one step after the other; same inputs and outputs as multistep).
    ``thresholds``: ``search`` chooses each ReLU layer's threshold for ``T`` from
    the ``percentile`` start (:mod:`onnx_rmpe.thresholds`; ``result.threshold_search``
    reports it); ``refine`` (default) then, for ``T <= 8``, moves them by the SNN's error at
    the output, before and after RMPE (:mod:`onnx_rmpe.refine`;
    ``result.threshold_refine``); ``percentile`` keeps the start. Trained QCFS thresholds are kept.
    ``finetune_data`` (labelled, or unlabelled: then it distils) runs stage 1 first: QCFS
    fine-tuning for ``epochs`` epochs at ``finetune_lr`` (None: the recipe's default;
    :func:`onnx_rmpe.finetune.finetune`, needs torch); its first ``calib_samples`` inputs
    calibrate RMPE when ``calib`` is not given. ``output`` (if
    given) receives the SNN; ``save_qcfs`` the QCFS ANN. Nothing is written unless the
    whole conversion succeeds. ``device`` (``cpu`` or ``cuda``, which needs
    onnxruntime-gpu) or ``providers`` (onnxruntime provider names, which win) choose where
    thresholds and calibration run; an unavailable provider falls back to CPU with a
    warning, and ``result.calibration.provider`` says which one ran. ``max_memory``
    (bytes; default half the available memory) bounds the calibration's batch size.
    Outputs that would overwrite an input or each other are refused before any work.
    ``report_dir``: also run :func:`onnx_rmpe.report` of the multi-step SNN on the
    calibration samples and write it there (``result.report``).
    """
    device = list(providers) if providers else device
    start = time.perf_counter()
    _check_options(T, levels, percentile, calib_samples, batch_size, threads, mode, rmpe_sweeps)
    validate.choice("thresholds", thresholds, THRESHOLDS)
    check_outputs({"output": output, "save_qcfs": save_qcfs,
                   "save_qcfs (target)":
                       None if save_qcfs is None else target_path_for(save_qcfs)},
                  {"model": model if not isinstance(model, onnx.ModelProto) else None,
                   "calib": calib if isinstance(calib, (str, os.PathLike)) else None,
                   "finetune_data": finetune_data
                   if isinstance(finetune_data, (str, os.PathLike)) else None})
    if calib is None and finetune_data is not None:
        calib = finetune_data
    if rmpe and calib is None:
        raise OptionError("calib", "RMPE calibration needs calibration data; give --calib "
                                     "(an .npz with array 'x') or turn it off with --no-rmpe")
    proto, source = read_model(model)
    refuse_snn(proto, source)
    refuse_non_float32(proto, source)
    if report_dir is not None and calib is None:
        raise OptionError("report_dir", "the report runs on the calibration data: give --calib")
    original = proto
    if finetune_data is not None:
        from onnx_rmpe.finetune import finetune

        chosen = {} if levels is None else {"levels": levels}  # else finetune's default L
        tuned = finetune(proto, finetune_data, **chosen, epochs=epochs, lr=finetune_lr,
                         batch_size=batch_size, percentile=percentile, seed=seed,
                         progress=progress)
        proto, levels = tuned.model, tuned.levels
    data = load_data(calib).head(calib_samples) if calib is not None else None
    qcfs, lams = build_qcfs(proto, data, levels=levels, percentile=percentile,
                            batch_size=batch_size, threads=threads, device=device,
                            source=source, max_memory=max_memory)
    levels = int(get_metadata(qcfs)["onnx_rmpe.levels"])  # the L used (a trained model's own)
    snn = qcfs_to_snn(qcfs, T=T)
    search: list[ThresholdReport] = []
    refined: list[RefineReport] = []
    run = dict(batch_size=batch_size, threads=threads, device=device, max_memory=max_memory)
    if thresholds != "percentile" and get_metadata(qcfs).get(
            "onnx_rmpe.thresholds_from") == "percentile":
        # post-training thresholds only: trained (fine-tuned) ones are the model's own
        chosen, search = search_thresholds(snn, qcfs, data, T=T, phi=DEFAULT_PHI,
                                           batch_size=batch_size, threads=threads,
                                           device=device, max_memory=max_memory)
        if thresholds == "refine" and T <= REFINE_MAX_T:
            chosen, report = refine_before_rmpe(qcfs, chosen, data,
                                                to_snn=lambda q: qcfs_to_snn(q, T=T), **run)
            refined.append(report)
        qcfs = set_thresholds(qcfs, chosen)
        set_metadata(qcfs, "onnx_rmpe.thresholds_from", f"{thresholds} for T={T}")
        lams = {**lams, **chosen}
        snn = qcfs_to_snn(qcfs, T=T)
    calibration = None
    if rmpe:
        calibration = calibrate(snn, qcfs, data, batch_size=batch_size,
                                granularity=rmpe_granularity, sweeps=rmpe_sweeps,
                                reference=qcfs if is_qcfs(proto) else
                                qcfs_with_levels(qcfs, CLIP_LEVELS),
                                threads=threads, device=device, max_memory=max_memory,
                                progress=progress)
        snn = calibration.snn
        if refined:
            snn, qcfs, chosen, report = refine_after_rmpe(snn, qcfs, chosen, data, **run)
            refined.append(report)
            lams = {**lams, **chosen}
    if data is not None:
        set_metadata(snn, "onnx_rmpe.calib_samples", str(len(data)))
    set_metadata(snn, "onnx_rmpe.thresholds", json.dumps(lams))
    snn_report = None
    if report_dir is not None:
        from onnx_rmpe.report import report

        snn_report = report(snn, data, qcfs=qcfs, ann=original, batch_size=batch_size,
                            threads=threads, device=device, progress=progress)
    if mode == "streaming":
        snn = snn_to_streaming(snn)
    elif mode == "chunked":
        snn = _chunked(qcfs, snn, T, chunk, max_memory, batch_size)
    elif mode == "unrolled":
        from onnx_rmpe.forms import snn_to_unrolled

        snn = snn_to_unrolled(snn)
    result = ConversionResult(snn, qcfs, T, levels, lams, calibration=calibration,
                              report=snn_report, threshold_search=search,
                              threshold_refine=refined)
    readout = get_metadata(qcfs).get("onnx_rmpe.readout_activations", "")
    result.readout_activations = readout.split(",") if readout else []
    anns = _anns_to_save(qcfs, calibration, levels, save_qcfs) if save_qcfs is not None else []
    written = save_models([*anns, (snn, output, "output")])
    result.output_path = written[-1]
    if anns:
        result.qcfs_path = written[0]
        result.target_path = written[1] if len(anns) > 1 else None
    if snn_report is not None:
        from onnx_rmpe.report import write_report

        write_report(snn_report, report_dir)
    result.seconds = time.perf_counter() - start
    logger.info("converted %s: %d spiking layer(s), T=%d, L=%d in %.1fs", source,
                len(lams), T, levels, result.seconds)
    return result


def _chunked(qcfs: onnx.ModelProto, snn: onnx.ModelProto, T: int, chunk: int | None,
             max_memory: int | None, batch_size: int) -> onnx.ModelProto:
    from onnx_rmpe.forms import chunk_for_budget, snn_to_chunked

    if chunk is None:
        budget = default_budget() if max_memory is None else max_memory
        chunk = chunk_for_budget(qcfs, T=T, batch=batch_size, budget_mb=budget / 2**20)
    return snn_to_chunked(qcfs, snn, chunk=chunk)


__all__ = ["ConversionResult", "build_qcfs", "convert", "qcfs_to_snn"]
