"""Fold a BatchNormalization that follows an activation into the linear layer after it.

Some models (Keras ``ReLU -> BatchNormalization -> Conv``) normalize *after* the
activation, so :mod:`fold_batchnorm` (which folds into the layer before) cannot take it.
Inference BatchNormalization is a per-channel affine map ``bn(a) = s * a + b`` (``s =
gamma / sqrt(var + eps)``, ``b = beta - mean * s``); the next linear layer absorbs it:

* Conv with no padding: ``W'[o, i] = W[o, i] * s[g(o) * Cg + i]``,
  ``bias'[o] = bias[o] + sum_{i, k} W[o, i, k] * b[g(o) * Cg + i]`` (groups allowed);
  with zero padding the border would see ``b`` where the original saw 0, so the fold is
  not exact and the node stays;
* Gemm on a 2-D input (``transA = 0``): ``B'[i, :] = B[i, :] * s[i]`` (rows, or columns
  when ``transB``), ``C' = C + (b @ B) * alpha / beta``.

A BatchNormalization that cannot be folded stays where it is: a per-channel affine map
runs exactly on spikes (the average over time of ``s * spikes + b`` is ``s * rate + b``).

Invariant: the graph computes the same function (to float rounding); a
BatchNormalization whose only consumer is a padding-free Conv or a Gemm as above no
longer exists.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.passes.base import PassResult, const_value, skip
from onnx_rmpe.passes.fold_batchnorm import _bn_affine

logger = logging.getLogger(__name__)


def fold_batchnorm_forward(graph: gs.Graph) -> PassResult:
    """Fold each BatchNormalization into the padding-free Conv or the Gemm it feeds."""
    folded = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        out = bn.outputs[0]
        affine = _bn_affine(bn)
        why = _unfoldable(graph, bn, affine)
        if why is None:
            nxt = out.outputs[0]
            folder = {"Conv": _into_conv, "Gemm": _into_gemm}.get(nxt.op)
            if folder is None or nxt.inputs[0] is not out:
                why = f"it feeds {nxt.op} {nxt.name}, not a Conv or Gemm's data input"
            elif not folder(nxt, *affine):
                why = (f"{nxt.op} {nxt.name} cannot absorb it exactly (zero padding, "
                       "non-constant weights or an unsupported layout)")
        if why is not None:
            skip(f"BatchNormalization {bn.name} kept as a per-channel affine: {why}")
            continue
        nxt.inputs[0] = bn.inputs[0]
        bn.inputs.clear()
        bn.outputs.clear()
        folded += 1
    if folded:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        logger.info("folded %d BatchNormalization node(s) into the layer after them", folded)
    return PassResult(graph, folded > 0)


def _unfoldable(graph: gs.Graph, bn: gs.Node, affine) -> str | None:
    """Why ``bn`` cannot be folded forward, before looking at its consumer; else None."""
    out = bn.outputs[0]
    if affine is None:
        return "its statistics are not constants (or it is in training mode)"
    if out in graph.outputs:
        return f"it produces graph output {out.name}"
    if len(out.outputs) != 1:
        return f"its output feeds {len(out.outputs)} nodes"
    return None


def _set_bias(node: gs.Node, idx: int, value: np.ndarray, name: str) -> None:
    bias = gs.Constant(name, np.ascontiguousarray(value, dtype=np.float32))
    if len(node.inputs) > idx:
        node.inputs[idx] = bias
    else:
        node.inputs.append(bias)


def _into_conv(conv: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_value(conv.inputs[1])
    if w is None or any(int(p) != 0 for p in conv.attrs.get("pads", [])) \
            or conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False
    groups = int(conv.attrs.get("group", 1))
    cout, cg = w.shape[0], w.shape[1]
    if cg * groups != scale.size or cout % groups:
        return False
    bias = const_value(conv.inputs[2]) if len(conv.inputs) > 2 else np.zeros(cout)
    if bias is None:
        return False
    w64 = w.astype(np.float64)
    per_out = cout // groups
    s_in = scale.reshape(groups, 1, cg).repeat(per_out, axis=1).reshape(cout, cg)
    b_in = shift.reshape(groups, 1, cg).repeat(per_out, axis=1).reshape(cout, cg)
    spatial = (1,) * (w.ndim - 2)
    new_w = w64 * s_in.reshape((cout, cg) + spatial)
    new_b = bias + (w64 * b_in.reshape((cout, cg) + spatial)).reshape(cout, -1).sum(1)
    conv.inputs[1] = gs.Constant(f"{conv.name}.weight_bnin", new_w.astype(np.float32))
    _set_bias(conv, 2, new_b, f"{conv.name}.bias_bnin")
    return True


def _into_gemm(gemm: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_value(gemm.inputs[1])
    x = gemm.inputs[0]
    if w is None or w.ndim != 2 or int(gemm.attrs.get("transA", 0)) \
            or (x.shape is not None and len(x.shape) != 2):
        return False
    b = w.T if int(gemm.attrs.get("transB", 0)) else w  # [in, out]
    if b.shape[0] != scale.size:
        return False
    alpha, beta = float(gemm.attrs.get("alpha", 1.0)), float(gemm.attrs.get("beta", 1.0))
    c = const_value(gemm.inputs[2]) if len(gemm.inputs) > 2 else np.zeros(b.shape[1])
    if c is None or beta == 0.0 or c.size not in (1, b.shape[1]):
        return False
    new_b = b.astype(np.float64) * scale[:, None]
    new_c = np.broadcast_to(c.reshape(-1), (b.shape[1],)) \
        + (shift @ b.astype(np.float64)) * alpha / beta
    new_w = new_b.T if int(gemm.attrs.get("transB", 0)) else new_b
    gemm.inputs[1] = gs.Constant(f"{gemm.name}.weight_bnin", new_w.astype(np.float32))
    _set_bias(gemm, 2, new_c, f"{gemm.name}.bias_bnin")
    return True
