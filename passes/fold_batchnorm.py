"""Fold inference-mode BatchNormalization into the linear layer before it.

With ``s = gamma / sqrt(var + eps)`` and ``b' = beta - mean * s`` (per output channel):

* Conv:   ``W'[o] = W[o] * s[o]``, ``bias'[o] = bias[o] * s[o] + b'[o]``
* Gemm:   the output columns of ``B`` scale by ``s``; ``C' = C * s + b' / beta``
* MatMul: ``W'[:, o] = W[:, o] * s[o]``, and a bias Add of ``b'`` follows (2-D only, where
  BatchNormalization's channel axis is the last axis); a following ``Add(const)`` bias is
  scaled too.

Invariant: the graph computes the same function (to float rounding, about 1e-6 relative);
no BatchNormalization remains directly after a Conv, Gemm or 2-D MatMul whose output
feeds only it. A BatchNormalization elsewhere stays: it is affine, so it runs as is in
the spiking network.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.passes.base import PassResult, const_value, producer, skip

logger = logging.getLogger(__name__)


def fold_batchnorm(graph: gs.Graph) -> PassResult:
    """Fold every foldable BatchNormalization into its Conv, Gemm or MatMul."""
    folded = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        if _fold_one(graph, bn):
            folded += 1
    if folded:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        logger.info("folded %d BatchNormalization node(s)", folded)
    return PassResult(graph, folded > 0)


def _bn_affine(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    params = [const_value(t) for t in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params) or len(bn.outputs) > 1:
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return scale, beta - mean * scale


def _fold_one(graph: gs.Graph, bn: gs.Node) -> bool:
    x = bn.inputs[0]
    lin = producer(x)
    affine = _bn_affine(bn)
    if lin is None or affine is None or len(x.outputs) != 1 or x in graph.outputs:
        skip(f"BatchNormalization {bn.name} kept: " + (
            "its input is a graph input" if lin is None else
            "its parameters are not constants (or it has training outputs)" if affine is None
            else f"its input feeds {len(x.outputs)} consumers" if len(x.outputs) != 1
            else "its input is a graph output"))
        return False
    scale, shift = affine
    if lin.op == "MatMul":
        folded = _fold_matmul(bn, lin, scale, shift)
        if not folded:
            skip(f"BatchNormalization {bn.name} kept: MatMul {lin.name} has no 2-D constant "
                 "weight of matching size (or a 2-D input)")
        return folded
    folder = {"Conv": _fold_conv, "Gemm": _fold_gemm, "Add": _fold_matmul_add}.get(lin.op)
    if folder is None or not folder(lin, scale, shift):
        skip(f"BatchNormalization {bn.name} kept: " + (
            f"it follows {lin.op} {lin.name}, not a Conv, Gemm or MatMul" if folder is None
            else f"{lin.op} {lin.name} has no constant weight/bias of matching shape"))
        return False
    out = bn.outputs[0]
    bn.outputs.clear()
    lin.outputs[0] = out
    return True


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _fold_conv(conv: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_value(conv.inputs[1])
    if w is None or w.shape[0] != scale.size:
        return False
    bias = const_value(conv.inputs[2]) if len(conv.inputs) > 2 else np.zeros(w.shape[0])
    if bias is None:
        return False
    shape = (-1,) + (1,) * (w.ndim - 1)
    conv.inputs[1] = gs.Constant(f"{conv.name}.weight_bn", _f32(w * scale.reshape(shape)))
    b = gs.Constant(f"{conv.name}.bias_bn", _f32(bias * scale + shift))
    if len(conv.inputs) > 2:
        conv.inputs[2] = b
    else:
        conv.inputs.append(b)
    return True


def _fold_gemm(gemm: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_value(gemm.inputs[1])
    if w is None or w.ndim != 2:
        return False
    trans_b = int(gemm.attrs.get("transB", 0))
    out_axis = 0 if trans_b else 1
    if w.shape[out_axis] != scale.size:
        return False
    beta = float(gemm.attrs.get("beta", 1.0))
    c = const_value(gemm.inputs[2]) if len(gemm.inputs) > 2 else np.zeros(scale.size)
    if c is None or c.size not in (1, scale.size):
        return False
    w_new = w * (scale[:, None] if trans_b else scale[None, :])
    if beta == 0.0:
        gemm.attrs["beta"], beta, c = 1.0, 1.0, np.zeros(scale.size)
    c_new = np.broadcast_to(c, scale.shape) * scale + shift / beta
    gemm.inputs[1] = gs.Constant(f"{gemm.name}.weight_bn", _f32(w_new))
    bias = gs.Constant(f"{gemm.name}.bias_bn", _f32(c_new))
    if len(gemm.inputs) > 2:
        gemm.inputs[2] = bias
    else:
        gemm.inputs.append(bias)
    return True


def _matmul_weight(mm: gs.Node, size: int) -> np.ndarray | None:
    w = const_value(mm.inputs[1])
    a_rank = len(mm.inputs[0].shape) if mm.inputs[0].shape is not None else None
    if w is None or w.ndim != 2 or w.shape[1] != size or a_rank not in (2, None):
        return None
    return w


def _fold_matmul(graph_bn: gs.Node, mm: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Scale the MatMul weight; the BatchNormalization node itself becomes the bias Add."""
    w = _matmul_weight(mm, scale.size)
    if w is None:
        return False
    mm.inputs[1] = gs.Constant(f"{mm.name}.weight_bn", _f32(w * scale[None, :]))
    graph_bn.op, graph_bn.attrs = "Add", {}
    x = graph_bn.inputs[0]
    graph_bn.inputs.clear()
    graph_bn.inputs.extend([x, gs.Constant(f"{mm.name}.bias_bn", _f32(shift))])
    return True


def _fold_matmul_add(add: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    src = producer(add.inputs[0])
    bias = const_value(add.inputs[1])
    if src is None or src.op != "MatMul" or bias is None or len(add.inputs[0].outputs) != 1:
        return False
    w = _matmul_weight(src, scale.size)
    if w is None or bias.size not in (1, scale.size):
        return False
    src.inputs[1] = gs.Constant(f"{src.name}.weight_bn", _f32(w * scale[None, :]))
    add.inputs[1] = gs.Constant(f"{add.name}.bias_bn",
                                _f32(np.broadcast_to(bias, scale.shape) * scale + shift))
    return True
