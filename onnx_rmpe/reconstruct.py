"""Layer-wise weight reconstruction in closed form (after Li et al. 2021, "A Free Lunch From
ANN: Towards Efficient, Accurate SNN Calibration"), label-free.

An SNN layer sees the *time-averaged spikes* of the layers before it, not the ANN's
activations; at low ``T`` they are quantized, clipped at the thresholds and biased. This
step refits each linear layer (``Conv``, ``Gemm``) whose input comes from spiking layers so
that, fed with the SNN's own input rates ``X`` (im2col patches for ``Conv``, with a column
of ones for the bias), it reproduces the ReLU ANN's output ``Z`` of that layer on the
calibration data:

    W' = argmin ||X W' - Z||^2 + lam ||W' - W||^2
       = (X^T X + lam I)^-1 (X^T Z + lam W)        lam = ridge * trace(X^T X) / d

per output channel (per group for grouped and depthwise convolutions; ``d`` is the number of
columns of ``X``). The ridge is chosen per layer and group from ``RIDGES`` by the error on
held-out calibration samples (every ``HOLDOUT``-th; fitted on the others), then the fit is
redone on all samples; if no ridge beats the original weights on the held-out samples the
group keeps them (a Gemm with more inputs than samples would otherwise be overfitted).
Since a linear layer commutes with the time average, ``X W'`` is exactly the time-averaged
input current the next neurons integrate. Layers are refitted front to back, each with the
rates of the already refitted SNN (one SNN pass and one ANN pass per group of layers that
read the same tensor). ``mode="bias"`` refits only the bias,
``b' = b + mean(Z - X W)`` per output channel (the cheaper row).

With RMPE: this step runs before RMPE calibration. It removes the part of the error in the
mean input current that is *linear in the input rates* (sample dependent) plus its
per-channel mean; RMPE's per-neuron ``v_init = T * (E[a_ANN] - E[r_SNN])`` then cancels what
is left of each neuron's mean rate error (the residual membrane potential, position
dependent). The QCFS ANN keeps the original weights (it is the target, not the SNN).

Invariant: on the calibration data, each refitted layer's squared error ``||X W' - Z||^2``
is at most that of the original weights (the ridge objective is minimized and is equal to
the plain error at ``W' = W``); a layer whose fit would not lower it keeps its weights.
Deterministic and independent of the batch size: sums are accumulated in float64 over fixed
chunks of ``CHUNK`` samples.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from onnx_rmpe.data import Dataset
from onnx_rmpe.runtime.memory import plan_batch
from onnx_rmpe.runtime.session import Device, batches, make_session
from onnx_rmpe.runtime.statistics import expose_outputs

logger = logging.getLogger(__name__)

#: Candidate relative ridges ``lam = ridge * trace(X^T X) / d`` (pull W' towards W); per
#: layer the one with the smallest error on held-out samples wins (none: keep W).
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Every ``HOLDOUT``-th calibration sample is held out to choose the ridge.
HOLDOUT = 4
#: Samples per accumulation chunk (fixed, so the sums do not depend on the batch size).
CHUNK = 32
#: At most this many bytes of float64 im2col rows per chunk: fewer samples per chunk for
#: large maps (224x224x64, 3x3: 231 MB a sample), set by the shapes alone.
COL_BYTES = 256 * 2**20
#: A group with more columns (inputs per output, plus the bias) keeps its weights: its
#: normal matrix (8 d^2 bytes, four copies) and solves (d^3) would not fit (VGG-19's first
#: Gemm: d = 25089, 5 GB a copy).
MAX_COLUMNS = 8192
MODES = ("weights", "bias")


@dataclass
class LayerFit:
    """One linear layer: mean squared error of its output against the ANN's, before/after."""

    name: str
    error_before: float
    error_after: float
    kept: bool


@dataclass
class ReconstructReport:
    layers: list[LayerFit] = field(default_factory=list)
    passes: int = 0
    seconds: float = 0.0


def reconstruct(snn: onnx.ModelProto, reference: onnx.ModelProto, data: Dataset, *,
                T: int, mode: str = "weights", batch_size: int = 128,
                threads: int | None = None, device: Device = "cpu"
                ) -> tuple[onnx.ModelProto, ReconstructReport]:
    """A copy of the multi-step ``snn`` with its linear layers refitted to ``reference``.

    ``reference`` is the ReLU ANN with the same node and tensor names (e.g.
    :func:`onnx_rmpe.thresholds.relu_reference` of the QCFS ANN). Returns the new SNN and a
    :class:`ReconstructReport`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    start = time.perf_counter()
    model = onnx.ModelProto.FromString(snn.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    report = ReconstructReport()
    ann_out = {n.name: n.output[0] for n in reference.graph.node}
    for tensor, nodes in _groups(model, inits, ann_out):
        x = _snn_means(model, tensor, data, T, batch_size, threads, device)
        zs = _ann_outputs(reference, [ann_out[n.name] for n in nodes], data, batch_size,
                          threads, device)
        report.passes += 1
        for node, z in zip(nodes, zs):
            report.layers.append(_refit(node, inits, model.graph.initializer, x, z, mode))
    report.seconds = time.perf_counter() - start
    kept = sum(f.kept for f in report.layers)
    logger.info("reconstruct (%s): %d of %d linear layer(s) refitted, %d SNN passes in %.1fs",
                mode, kept, len(report.layers), report.passes, report.seconds)
    return model, report


def _groups(model: onnx.ModelProto, inits, ann_out: dict[str, str]
            ) -> list[tuple[str, list[onnx.NodeProto]]]:
    """Conv/Gemm nodes fed by a computed tensor, grouped by that tensor (topological order)."""
    inputs = {i.name for i in model.graph.input}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        reason = _unsupported(node, inits)
        if node.op_type not in ("Conv", "Gemm") or node.input[0] in inputs:
            continue
        if reason is None and node.name not in ann_out:
            reason = "no node of that name in the reference ANN"
        if reason:
            logger.info("reconstruct: %s '%s' kept as is: %s", node.op_type, node.name, reason)
            continue
        groups.setdefault(node.input[0], []).append(node)
    return list(groups.items())


def _unsupported(node: onnx.NodeProto, inits) -> str | None:
    if any(name not in inits for name in node.input[1:] if name):
        return "its weights are not initializers"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or \
                attrs.get("beta", 1.0) != 1.0:
            return "Gemm with transA, alpha or beta"
    elif attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return "Conv with auto_pad"
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
        return None
    w = inits[node.input[1]].dims
    columns = (w[0] if attrs.get("transB", 0) else w[-1]) if node.op_type == "Gemm" else \
        int(np.prod(w[1:]))
    if columns + 1 > MAX_COLUMNS:
        return f"{columns + 1} columns, above MAX_COLUMNS = {MAX_COLUMNS}"
    return None


def _snn_means(model, tensor: str, data: Dataset, T: int, batch_size: int, threads,
               device) -> np.ndarray:
    """The time average of ``tensor`` in the SNN, per sample ``[n, ...]``."""
    session = make_session(expose_outputs(model, [tensor]), threads=threads, device=device)
    name = session.get_inputs()[0].name
    out = []
    for sl in batches(len(data), batch_size):
        value = session.run([tensor], {name: data.x[sl]})[0]
        n = sl.stop - sl.start
        out.append(value.reshape((T, n) + value.shape[1:]).mean(0) if len(value) == T * n
                   else value)
    return np.concatenate(out)


def _ann_outputs(model, tensors: list[str], data: Dataset, batch_size: int, threads,
                 device) -> list[np.ndarray]:
    session = make_session(expose_outputs(model, tensors), threads=threads, device=device)
    name = session.get_inputs()[0].name
    parts = [session.run(tensors, {name: data.x[sl]}) for sl in batches(len(data), batch_size)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(tensors))]


def _refit(node, inits, model_inits, x: np.ndarray, z: np.ndarray, mode: str) -> LayerFit:
    """Refit one layer's weights in place (``inits``); returns its errors."""
    w_init = inits[node.input[1]]
    w = numpy_helper.to_array(w_init)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        w_mat = w if attrs.get("transB", 0) else w.T              # [M, K]
        groups, m = 1, w_mat.shape[0]
    else:
        groups, m = int(attrs.get("group", 1)), w.shape[0]
        attrs.setdefault("kernel_shape", list(w.shape[2:]))  # optional in ONNX
        w_mat = w.reshape(m, -1)                                   # [M, Cg*kh*kw]
    b_name = node.input[2] if len(node.input) > 2 else ""
    b = numpy_helper.to_array(inits[b_name]).reshape(-1) if b_name else np.zeros(m, np.float32)
    mg = m // groups
    held = np.arange(len(x)) % HOLDOUT == HOLDOUT - 1
    fit_part = _moments(node, attrs, x[~held], z[~held], groups, mg)
    held_part = _moments(node, attrs, x[held], z[held], groups, mg)
    xtx, xtz, ztz = (p + q for p, q in zip(fit_part, held_part))
    new_w, new_b = w_mat.astype(np.float64).copy(), b.astype(np.float64).copy()
    before = after = 0.0
    for g in range(groups):
        rows = slice(g * mg, (g + 1) * mg)
        old = np.vstack([w_mat[rows].T, b[rows][None]]).astype(np.float64)   # [d, Mg]
        ridge = _choose_ridge(fit_part, held_part, g, old, mode)
        e_old = e_new = _error(xtx[g], xtz[g], ztz[g], old)
        if ridge is not None:
            fit = _solve(xtx[g], xtz[g], old, mode, ridge)
            e_new = _error(xtx[g], xtz[g], ztz[g], fit)
        if e_new < e_old:
            new_w[rows], new_b[rows] = fit[:-1].T, fit[-1]
        else:
            e_new = e_old
        before, after = before + e_old, after + e_new
    kept = after < before
    if kept:
        out_w = new_w.T if node.op_type == "Gemm" and not attrs.get("transB", 0) else new_w
        w_init.CopyFrom(numpy_helper.from_array(out_w.reshape(w.shape).astype(np.float32),
                                                w_init.name))
        if not b_name:  # the fit has a bias: give the layer one
            b_name = f"{node.name}.reconstructed_bias"
            node.input.append(b_name)
            inits[b_name] = model_inits.add()
            inits[b_name].CopyFrom(numpy_helper.from_array(b, b_name))
        shape = numpy_helper.to_array(inits[b_name]).shape
        inits[b_name].CopyFrom(numpy_helper.from_array(
            new_b.reshape(shape).astype(np.float32), b_name))
    n = z.size
    logger.debug("reconstruct: %s error %.4g -> %.4g", node.name, before / n, after / n)
    return LayerFit(node.name, before / n, after / n, kept)


def _choose_ridge(fit_part, held_part, g: int, old: np.ndarray, mode: str) -> float | None:
    """The ridge whose fit on ``fit_part`` has the smallest error on ``held_part`` (group
    ``g``), or ``None`` when no fit beats the original weights there."""
    held = [m[g] for m in held_part]
    best, best_error = None, _error(*held, old) * (1 - 1e-4)
    for ridge in (RIDGES if mode == "weights" else (0.0,)):
        e = _error(*held, _solve(fit_part[0][g], fit_part[1][g], old, mode, ridge))
        if e < best_error:
            best, best_error = ridge, e
    return best


def _moments(node, attrs, x: np.ndarray, z: np.ndarray, groups: int, mg: int):
    """Per group: X^T X, X^T Z and Z^T Z (trace) in float64, X with a ones column."""
    xtx, xtz, ztz = None, None, None
    if node.op_type == "Conv":  # im2col rows and columns of one sample
        rows = int(np.prod(z.shape[2:]))
        columns = x.shape[1] // groups * int(np.prod(attrs["kernel_shape"])) + 1
    else:
        rows, columns = 1, x[:1].size + 1
    chunk = int(np.clip(COL_BYTES // (rows * groups * columns * 8), 1, CHUNK))
    for sl in batches(len(x), chunk):
        if node.op_type == "Gemm":
            cols = x[sl].reshape(sl.stop - sl.start, -1)[:, None, :]       # [rows, 1, K]
            zz = z[sl].reshape(sl.stop - sl.start, -1)
        else:
            cols = _patches(x[sl], attrs, groups)                         # [rows, g, d-1]
            zz = z[sl].transpose(0, 2, 3, 1).reshape(-1, z.shape[1])
        ones = np.ones(cols.shape[:2] + (1,), np.float32)
        cols = np.concatenate([cols, ones], axis=2).astype(np.float64)
        zz = zz.astype(np.float64).reshape(len(zz), groups, mg)
        by_group = cols.transpose(1, 2, 0)                     # [g, d, rows]: BLAS products
        a = np.matmul(by_group, cols.transpose(1, 0, 2))
        c = np.matmul(by_group, zz.transpose(1, 0, 2))
        e = np.einsum("rgj,rgj->g", zz, zz)
        xtx, xtz, ztz = (a, c, e) if xtx is None else (xtx + a, xtz + c, ztz + e)
    return xtx, xtz, ztz


def _patches(x: np.ndarray, attrs, groups: int) -> np.ndarray:
    """im2col of ``x`` ``[n, C, H, W]``: ``[n*Ho*Wo, groups, C/groups*kh*kw]``."""
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", (1, 1))
    dh, dw = attrs.get("dilations", (1, 1))
    top, left, bottom, right = attrs.get("pads", (0, 0, 0, 0))
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]                            # [n, C, Ho, Wo, kh, kw]
    n, c, ho, wo = win.shape[:4]
    win = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, groups, (c // groups) * kh * kw)
    return win


def _solve(xtx: np.ndarray, xtz: np.ndarray, old: np.ndarray, mode: str,
           ridge: float) -> np.ndarray:
    """The ridge fit (``weights``) or the bias-only fit (``bias``) of one group."""
    if mode == "bias":
        count, sum_x, sum_z = xtx[-1, -1], xtx[-1, :-1], xtz[-1]
        fit = old.copy()
        fit[-1] = (sum_z - sum_x @ old[:-1]) / count
        return fit
    d = len(xtx)
    lam = ridge * np.trace(xtx) / d
    return np.linalg.solve(xtx + lam * np.eye(d), xtz + lam * old)


def _error(xtx, xtz, ztz, w) -> float:
    """``||X w - Z||^2`` from the moments."""
    return float(np.einsum("ij,ik,jk->", xtx, w, w) - 2 * np.sum(w * xtz) + ztz.sum())


def reconstruct_snn(snn: onnx.ModelProto, qcfs: onnx.ModelProto, data: Dataset, *, T: int,
                    mode: str = "weights", batch_size: int = 128, threads: int | None = None,
                    device: Device = "cpu", max_memory: int | None = None
                    ) -> tuple[onnx.ModelProto, ReconstructReport]:
    """:func:`reconstruct` of ``snn`` against the ReLU ANN of its QCFS ANN ``qcfs``."""
    from onnx_rmpe.thresholds import relu_reference

    batch_size = plan_batch(snn, batch_size, max_memory, what="the weight reconstruction")
    return reconstruct(snn, relu_reference(qcfs), data, T=T, mode=mode, batch_size=batch_size,
                       threads=threads, device=device)


def with_snn_weights(qcfs: onnx.ModelProto, snn: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``qcfs`` whose Conv/Gemm nodes take the (reconstructed) weights and biases of
    the nodes of the same name in ``snn`` (for forms rebuilt from the QCFS ANN)."""
    model = onnx.ModelProto.FromString(qcfs.SerializeToString())
    snn_nodes = {n.name: n for n in snn.graph.node if n.op_type in ("Conv", "Gemm")}
    snn_inits = {t.name: t for t in snn.graph.initializer}
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        other = snn_nodes.get(node.name)
        if other is None or node.op_type != other.op_type:
            continue
        for k, name in enumerate(other.input[1:], start=1):
            if name not in snn_inits:
                continue
            if k >= len(node.input):
                node.input.append(name)
            target = inits.get(node.input[k])
            if target is None:
                target = inits[node.input[k]] = model.graph.initializer.add()
            target.CopyFrom(snn_inits[name])
            target.name = node.input[k]
    return model


__all__ = ["CHUNK", "COL_BYTES", "HOLDOUT", "MAX_COLUMNS", "MODES", "RIDGES", "LayerFit",
           "ReconstructReport", "reconstruct", "reconstruct_snn", "with_snn_weights"]
