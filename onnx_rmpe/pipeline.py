"""The steps every job shares: an ANN to its QCFS ANN, a QCFS ANN to its multi-step SNN.

``convert`` runs them in order (load -> :func:`build_qcfs` (prepare passes, thresholds,
QCFS passes) -> threshold search -> :func:`qcfs_to_snn` -> RMPE calibration -> forms ->
save); ``finetune`` and ``inspect`` use the same steps. The pass lists themselves are in
:mod:`onnx_rmpe.passes.pipeline`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from onnx_rmpe.data import Dataset, check_fits
from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.modelio import (
    default_opset,
    get_metadata,
    is_snn,
    is_streaming,
    prepare,
    to_graph,
    to_model,
)
from onnx_rmpe.ops import DEFAULT_PHI
from onnx_rmpe.passes.base import Sequential, run_passes
from onnx_rmpe.passes.pipeline import if_passes, prepare_passes, qcfs_passes
from onnx_rmpe.passes.relu_to_qcfs import activation_sites, output_activations, qcfs_nodes
from onnx_rmpe.passes.support import check_supported
from onnx_rmpe.runtime.channel_stats import channel_percentiles
from onnx_rmpe.runtime.memory import plan_batch
from onnx_rmpe.runtime.session import Device
from onnx_rmpe.runtime.statistics import positive_percentiles
from onnx_rmpe.version import __version__

logger = logging.getLogger(__name__)

#: QCFS levels of a ReLU model when none are given (a trained QCFS model keeps its own).
DEFAULT_LEVELS = 8
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
               max_memory: int | None = None,
               per_channel: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Normalize a (ReLU or QCFS) ANN and return the QCFS ANN with its thresholds.

    ``per_channel``: thresholds per channel where the layers around an activation can
    absorb them (:mod:`onnx_rmpe.passes.equalize_channels`); the returned thresholds are
    the layers' scalar ones either way. The QCFS ANN's metadata ``onnx_rmpe.thresholds_per``
    says ``channel`` when at least one layer's channels were rescaled, else ``layer``."""
    prepared = prepare(model, source)
    graph = run_passes(to_graph(prepared), prepare_passes())
    check_supported(graph)
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
    thresholds, ranges = {}, None
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
        if per_channel:
            ranges = _channel_ranges(relu_model, data, sites, percentile=percentile,
                                     batch_size=batch_size, threads=threads, device=device)
    rescaled = False
    for qcfs_pass in qcfs_passes(thresholds=thresholds, levels=levels, channel_ranges=ranges):
        graph, changed = Sequential(qcfs_pass)(graph)  # one by one: did equalize change it?
        rescaled = rescaled or (changed and qcfs_pass.name == "equalize_channels")
    for node in qcfs_nodes(graph):
        thresholds[node.name] = float(np.asarray(node.inputs[1].values))
    qcfs = to_model(graph, keep_shapes=True, metadata={
        **get_metadata(prepared), "onnx_rmpe.kind": "qcfs", "onnx_rmpe.version": __version__,
        "onnx_rmpe.levels": str(levels), "onnx_rmpe.percentile": str(percentile),
        "onnx_rmpe.thresholds_from": "percentile" if sites else "training",
        "onnx_rmpe.thresholds_per": "channel" if rescaled else "layer",
        **({"onnx_rmpe.readout_activations": ",".join(readout)} if readout else {})})
    return qcfs, thresholds


def _channel_ranges(relu_model: onnx.ModelProto, data: Dataset, sites, **options) -> dict:
    """Per-channel thresholds ``min(percentile_c, cap)`` of each activation site."""
    pct = channel_percentiles(relu_model, data.x, [s.pre_activation for s in sites], **options)
    return {s.node: np.minimum(pct[s.pre_activation], np.inf if s.cap is None else s.cap)
            for s in sites if s.pre_activation in pct}


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


def qcfs_to_snn(qcfs: onnx.ModelProto, *, T: int, phi: float = DEFAULT_PHI,
                form: str | None = None) -> onnx.ModelProto:
    """The multi-step SNN of a QCFS model (uncalibrated: ``v_init = 0``).

    ``form``: the IF body (``unrolled``/``scan``; default by T), same spikes either way.
    """
    graph = run_passes(to_graph(qcfs), if_passes(T=T, phi=phi, form=form))
    meta = get_metadata(qcfs)
    meta.update({"onnx_rmpe.kind": "snn", "onnx_rmpe.T": str(T), "onnx_rmpe.phi": str(phi),
                 "onnx_rmpe.rmpe": "none"})
    return to_model(graph, opset=default_opset(qcfs), metadata=meta)


__all__ = ["DEFAULT_LEVELS", "SANE_THRESHOLDS", "build_qcfs", "qcfs_to_snn", "refuse_non_float32",
           "refuse_snn"]
