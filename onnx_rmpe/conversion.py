"""The conversion pipeline: ANN (ONNX) -> QCFS ANN -> IF-neuron SNN (ONNX)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_rmpe import validate
from onnx_rmpe.calibration import CLIP_LEVELS, CalibrationResult, calibrate, qcfs_with_levels
from onnx_rmpe.channel_choice import METADATA_KEY as CHOICE_KEY
from onnx_rmpe.channel_choice import ChannelChoice, check_choice
from onnx_rmpe.channel_choice import choose as choose_per_channel
from onnx_rmpe.data import load_data
from onnx_rmpe.errors import OptionError
from onnx_rmpe.forms import snn_to_streaming
from onnx_rmpe.modelio import (
    get_metadata,
    is_qcfs,
    read_model,
    save_models,
    set_metadata,
)
from onnx_rmpe.outputs import check_outputs
from onnx_rmpe.pipeline import (
    DEFAULT_LEVELS,
    SANE_THRESHOLDS,
    build_qcfs,
    qcfs_to_snn,
    refuse_non_float32,
    refuse_snn,
)
from onnx_rmpe.recipe import check_finetune_options
from onnx_rmpe.reconstruct import ReconstructReport, reconstruct_snn, with_snn_weights
from onnx_rmpe.refine import MAX_T as REFINE_MAX_T
from onnx_rmpe.refine import (
    PotentialReport,
    RefineReport,
    output_error,
    refine_after_rmpe,
    refine_before_rmpe,
    refine_potentials,
    sample_errors,
)
from onnx_rmpe.refine import affordable as refine_affordable
from onnx_rmpe.runtime.memory import default_budget
from onnx_rmpe.runtime.neurons import DEFAULT_PHI
from onnx_rmpe.runtime.options import RuntimeOptions
from onnx_rmpe.runtime.session import Device
from onnx_rmpe.thresholds import ThresholdReport, relu_reference, set_thresholds
from onnx_rmpe.thresholds import search as search_thresholds_and_outputs

logger = logging.getLogger(__name__)

MODES = ("multistep", "streaming", "chunked", "unrolled")
#: How ReLU layers get their thresholds: ``search`` (per layer, for the target T, from the
#: percentile start; see :mod:`onnx_rmpe.thresholds`) or ``percentile`` (the start alone);
#: ``refine`` (the default) is ``search`` followed by :mod:`onnx_rmpe.refine` (thresholds
#: moved by the error at the network output, before and after RMPE).
THRESHOLDS = ("refine", "search", "percentile")
#: Refit the SNN's linear layers to the ReLU ANN before RMPE (:mod:`onnx_rmpe.reconstruct`):
#: ``weights`` (ridge fit of weights and bias), ``bias`` (bias only) or ``none``; ``auto``
#: (the default) is ``weights`` where ``refine`` runs (post-training thresholds, T <= 8).
RECONSTRUCT = ("auto", "none", "weights", "bias")


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
    #: Stage 1's FinetuneResult when ``finetune_data`` was given (onnx_rmpe.finetune).
    finetune: object | None = None
    #: ``reconstruct``: the refitted linear layers (:mod:`onnx_rmpe.reconstruct`).
    reconstruction: ReconstructReport | None = None
    #: ``per_channel``: thresholds per channel or per layer, and (``auto``) both output
    #: errors on the calibration data (:mod:`onnx_rmpe.channel_choice`).
    per_channel: ChannelChoice | None = None
    #: ``thresholds="refine"`` with RMPE: the per-layer scales of ``v_init`` kept by the
    #: output error (:func:`onnx_rmpe.refine.refine_potentials`).
    potential_refine: PotentialReport | None = None


@dataclass
class _Built:
    """One conversion's SNN and what made it (before the choice and the forms)."""

    snn: onnx.ModelProto
    qcfs: onnx.ModelProto
    lams: dict[str, float]
    levels: int
    calibration: CalibrationResult | None
    search: list[ThresholdReport]
    refined: list[RefineReport]
    rebuilt: ReconstructReport | None
    rmpe_refined: bool
    potentials: PotentialReport | None = None

    def final_error(self, data, run: dict) -> float:
        """The SNN's output error on the calibration data: the last refinement's when it
        ran after RMPE (its SNN is this one), else one SNN pass (and one ANN pass)."""
        if self.potentials is not None:
            return self.potentials.error_end
        if self.rmpe_refined:
            return self.refined[-1].error_end
        return output_error(self.snn, relu_reference(self.qcfs), data, **run)

    def sample_errors(self, data, run: dict) -> np.ndarray:
        """Per calibration sample, the SNN's output error: the potential step's, else one
        SNN and one ANN pass."""
        if self.potentials is not None and self.potentials.sample_errors is not None:
            return self.potentials.sample_errors
        return sample_errors(self.snn, relu_reference(self.qcfs), data, **run)


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


def convert(model: str | os.PathLike | onnx.ModelProto, *, T: int, calib=None,
            output: str | os.PathLike | None = None, levels: int | None = None,
            percentile: float = 99.9,
            calib_samples: int | None = 512, batch_size: int = 128, rmpe: bool = True,
            rmpe_granularity: str = "neuron", rmpe_sweeps: int = 1,
            thresholds: str = "refine", reconstruct: str = "auto", mode: str = "multistep",
            chunk: int | None = None,
            finetune_data=None, finetune_options: Mapping[str, Any] | None = None,
            epochs: int | None = None, finetune_lr: float | None = None,
            seed: int | None = None,
            save_qcfs: str | os.PathLike | None = None,
            threads: int | None = None, device: Device = "cpu",
            providers: Sequence[str] | None = None, max_memory: int | None = None,
            runtime: RuntimeOptions | None = None,
            progress: bool = False,
            report_dir: str | os.PathLike | None = None,
            per_channel: bool | str = "auto", engine: str = "local") -> ConversionResult:
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
    ``result.threshold_refine``), and after an accepted RMPE scales each layer's ``v_init``
    by 1, 1/2 or 0 by the same error (``result.potential_refine``); ``percentile`` keeps
    the start. Trained QCFS thresholds are kept.
    ``finetune_data`` (labelled, or unlabelled: then it distils) runs stage 1 first: QCFS
    fine-tuning by :func:`onnx_rmpe.finetune.finetune` (needs torch) with its keywords in
    ``finetune_options`` (``epochs``, ``lr``, ``batch_size`` (of the training), ``val``,
    ...; :data:`onnx_rmpe.recipe.FINETUNE_OPTIONS`; the rest at finetune's defaults, L
    = ``levels`` or finetune's default); ``epochs``, ``finetune_lr`` and ``seed`` are
    shorthands for three of them. Fine-tuning options without ``finetune_data`` are
    refused. Its first ``calib_samples`` inputs calibrate RMPE when ``calib`` is not
    given. ``output`` (if
    given) receives the SNN; ``save_qcfs`` the QCFS ANN. Nothing is written unless the
    whole conversion succeeds. ``device`` (``cpu`` or ``cuda``, which needs
    onnxruntime-gpu) or ``providers`` (onnxruntime provider names, which win) choose where
    thresholds and calibration run; an unavailable provider falls back to CPU with a
    warning, and ``result.calibration.provider`` says which one ran. ``max_memory``
    (bytes; default half the available memory) bounds the calibration's batch size.
    Outputs that would overwrite an input or each other are refused before any work.
    ``report_dir``: also run :func:`onnx_rmpe.report` of the multi-step SNN on the
    calibration samples and write it there (``result.report``).
    ``per_channel``: ``True``: a QCFS threshold per channel where the layers around an
    activation allow it (:mod:`onnx_rmpe.passes.equalize_channels`); ``False``: one per
    layer; ``"auto"`` (default): where per channel is possible, convert both ways and keep
    the SNN whose output is closer to the ReLU ANN's on the calibration data
    (:mod:`onnx_rmpe.channel_choice`; twice the conversion time; ``result.per_channel``
    and the SNN's metadata ``onnx_rmpe.per_channel_choice`` say which and both errors).
    ``engine``: ``ray`` runs the RMPE calibration's ANN-target pass on a Ray cluster (see
    :func:`onnx_rmpe.calibrate`; same potentials); ``local`` (default) in this process.
    """
    batch_size, threads, device, max_memory = RuntimeOptions.resolve(
        runtime, batch_size=batch_size, threads=threads, device=device, providers=providers,
        max_memory=max_memory)
    start = time.perf_counter()
    _check_options(T, levels, percentile, calib_samples, batch_size, threads, mode, rmpe_sweeps)
    validate.choice("thresholds", thresholds, THRESHOLDS)
    validate.choice("reconstruct", reconstruct, RECONSTRUCT)
    check_choice(per_channel)
    tuning = _finetune_options(finetune_data, finetune_options, epochs=epochs, lr=finetune_lr,
                               seed=seed)
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
        try:
            tuned = finetune(proto, finetune_data, **chosen, **tuning, percentile=percentile,
                             progress=progress)
        except OptionError as exc:  # convert's batch_size is onnxruntime's
            if exc.option == "batch_size":
                raise OptionError("train_batch_size", exc.reason) from None
            raise
        proto, levels = tuned.model, tuned.levels
    else:
        tuned = None
    data = load_data(calib).head(calib_samples) if calib is not None else None
    run = dict(batch_size=batch_size, threads=threads, device=device, max_memory=max_memory)
    steps = dict(T=T, levels=levels, percentile=percentile, thresholds=thresholds,
                 reconstruct=reconstruct, rmpe=rmpe, rmpe_granularity=rmpe_granularity,
                 rmpe_sweeps=rmpe_sweeps, progress=progress, source=source,
                 engine=engine)
    built, scope = choose_per_channel(
        lambda pc: _build_snn(proto, data, per_channel=pc, run=run, **steps),
        scope_of=lambda b: get_metadata(b.qcfs).get("onnx_rmpe.thresholds_per", "layer"),
        error_of=lambda b: b.final_error(data, run), per_channel=per_channel,
        stages_of=lambda b: [e for r in b.refined for e in (r.error_start, r.error_end)],
        comparable=lambda b: bool(b.refined),
        samples_of=lambda b: b.sample_errors(data, run))
    snn, qcfs, lams, levels = built.snn, built.qcfs, built.lams, built.levels
    calibration, search, refined = built.calibration, built.search, built.refined
    rebuilt = built.rebuilt
    set_metadata(snn, CHOICE_KEY, scope.as_metadata())
    if data is not None:
        set_metadata(snn, "onnx_rmpe.calib_samples", str(len(data)))
    set_metadata(snn, "onnx_rmpe.thresholds", json.dumps(lams))
    snn_report = None
    if report_dir is not None:
        from onnx_rmpe.reporting import report

        snn_report = report(snn, data, qcfs=qcfs, ann=original, batch_size=batch_size,
                            threads=threads, device=device, progress=progress)
    if mode == "streaming":
        snn = snn_to_streaming(snn)
    elif mode == "chunked":
        # the chunked form is rebuilt from the QCFS ANN: give it the SNN's refitted weights
        snn = _chunked(with_snn_weights(qcfs, snn) if rebuilt else qcfs, snn, T, chunk,
                       max_memory, batch_size)
    elif mode == "unrolled":
        from onnx_rmpe.forms import snn_to_unrolled

        snn = snn_to_unrolled(snn)
    result = ConversionResult(snn, qcfs, T, levels, lams, calibration=calibration,
                              report=snn_report, threshold_search=search, finetune=tuned,
                              threshold_refine=refined, reconstruction=rebuilt,
                              per_channel=scope, potential_refine=built.potentials)
    readout = get_metadata(qcfs).get("onnx_rmpe.readout_activations", "")
    result.readout_activations = readout.split(",") if readout else []
    anns = _anns_to_save(qcfs, calibration, levels, save_qcfs) if save_qcfs is not None else []
    written = save_models([*anns, (snn, output, "output")])
    result.output_path = written[-1]
    if anns:
        result.qcfs_path = written[0]
        result.target_path = written[1] if len(anns) > 1 else None
    if snn_report is not None:
        from onnx_rmpe.reporting import write_report

        write_report(snn_report, report_dir)
    result.seconds = time.perf_counter() - start
    logger.info("converted %s: %d spiking layer(s), T=%d, L=%d in %.1fs", source,
                len(lams), T, levels, result.seconds)
    return result


def _build_snn(proto: onnx.ModelProto, data, *, per_channel: bool, T: int, levels: int | None,
               percentile: float, thresholds: str, reconstruct: str, rmpe: bool,
               rmpe_granularity: str, rmpe_sweeps: int, progress: bool, source: str,
               engine: str,
               run: dict) -> _Built:
    """QCFS ANN, thresholds for T, weight reconstruction, RMPE, refinement: one multi-step SNN."""
    qcfs, lams = build_qcfs(proto, data, levels=levels, percentile=percentile, source=source,
                            per_channel=per_channel, **run)
    levels = int(get_metadata(qcfs)["onnx_rmpe.levels"])  # the L used (a trained model's own)
    snn = qcfs_to_snn(qcfs, T=T)
    search: list[ThresholdReport] = []
    refined: list[RefineReport] = []
    uncalibrated = None
    if thresholds != "percentile" and get_metadata(qcfs).get(
            "onnx_rmpe.thresholds_from") == "percentile":
        # post-training thresholds only: trained (fine-tuned) ones are the model's own
        refining = thresholds == "refine" and T <= REFINE_MAX_T and refine_affordable(
            qcfs, data, T=T, layers=len(lams))
        # without refinement the search's spikes are the uncalibrated SNN's: RMPE's check
        # takes that SNN's outputs from them instead of running it once more
        found = search_thresholds_and_outputs(snn, qcfs, data, T=T, phi=DEFAULT_PHI,
                                              outputs=rmpe and not refining, **run)
        chosen, search, uncalibrated = found.thresholds, found.reports, found.outputs
        if refining:
            chosen, report = refine_before_rmpe(qcfs, chosen, data,
                                                to_snn=lambda q: qcfs_to_snn(q, T=T), **run)
            refined.append(report)
        qcfs = set_thresholds(qcfs, chosen)
        set_metadata(qcfs, "onnx_rmpe.thresholds_from", f"{thresholds} for T={T}")
        lams = {**lams, **chosen}
        snn = qcfs_to_snn(qcfs, T=T)
    rebuilt = None
    if reconstruct == "auto":
        reconstruct = "weights" if refined else "none"
    if reconstruct != "none" and data is not None:
        snn, rebuilt = reconstruct_snn(snn, qcfs, data, T=T, mode=reconstruct, **run)
    calibration = None
    rmpe_refined, potentials = False, None
    if rmpe:
        calibration = calibrate(snn, qcfs, data, granularity=rmpe_granularity,
                                sweeps=rmpe_sweeps,
                                reference=qcfs if is_qcfs(proto) else
                                qcfs_with_levels(qcfs, CLIP_LEVELS),
                                progress=progress, uncalibrated_outputs=uncalibrated,
                                engine=engine, **run)
        snn = calibration.snn
        if refined:
            snn, qcfs, chosen, report = refine_after_rmpe(snn, qcfs, chosen, data, **run)
            refined.append(report)
            lams = {**lams, **chosen}
            rmpe_refined = True
            if calibration.accepted:  # RMPE's v_init against the output error, per layer
                snn, potentials = refine_potentials(snn, relu_reference(qcfs), data, **run)
                set_metadata(snn, "onnx_rmpe.potential_scales",
                             json.dumps(potentials.scales))
    return _Built(snn, qcfs, lams, levels, calibration, search, refined, rebuilt, rmpe_refined,
                  potentials)


def _finetune_options(finetune_data, options: Mapping[str, Any] | None, **shorthands
                      ) -> dict[str, Any]:
    """The keywords for ``finetune``: ``options`` plus the shorthands that were given."""
    tuning = {k: v for k, v in shorthands.items() if v is not None}
    tuning.update(options or {})
    if finetune_data is None:
        if tuning:
            key = next(iter(tuning))
            name = {"batch_size": "train_batch_size", "lr": "finetune_lr"}.get(key, key)
            raise OptionError(name, "is a fine-tuning option: it applies only with "
                                    "finetune_data (--finetune-data); give training data or "
                                    "drop it")
        return {}
    check_finetune_options(tuning, batch_name="train_batch_size")
    return tuning


def _chunked(qcfs: onnx.ModelProto, snn: onnx.ModelProto, T: int, chunk: int | None,
             max_memory: int | None, batch_size: int) -> onnx.ModelProto:
    from onnx_rmpe.forms import chunk_for_budget, snn_to_chunked

    if chunk is None:
        budget = default_budget() if max_memory is None else max_memory
        chunk = chunk_for_budget(qcfs, T=T, batch=batch_size, budget_mb=budget / 2**20)
    return snn_to_chunked(qcfs, snn, chunk=chunk)


__all__ = ["DEFAULT_LEVELS", "SANE_THRESHOLDS", "ConversionResult", "build_qcfs", "convert",
           "qcfs_to_snn", "refuse_non_float32", "refuse_snn"]
