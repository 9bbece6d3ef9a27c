"""Fan-out of one neuron through one op: exact, from weights, strides, padding, groups.

The fan-out of an input element ``i`` of a linear layer ``y = W x`` (Conv, ConvTranspose,
Gemm, MatMul with a constant weight) is ``F_i = #{j : W_ji != 0}``: the accumulates one
spike into ``i`` costs. It depends on the position (a neuron at a padded border reaches
fewer outputs) and is counted exactly from the weights, strides, padding, dilations and
groups. The layer's dense multiply-accumulates (the ANN's cost, zeros included) are
``sum_j #{weights feeding j}``.

Ops that only move or mix values linearly (AveragePool, GlobalAveragePool, Flatten,
Reshape, Transpose, Pad, Concat, Add, Squeeze/Unsqueeze, scaling by constants) carry a
fan-out back to their inputs: ``F_in[i] = sum of F_out[k]`` over the outputs ``k`` that
read ``i`` (one accumulate per path: with overlapping pooling windows an output reached
through two windows counts twice; with the usual non-overlapping pools each path is a
distinct synapse). All shapes here are per sample (no batch axis).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops a fan-out is carried back through (between spiking layers and linear layers).
GLUE_OPS = ("Identity", "Dropout", "Neg", "Mul", "Div", "Add", "Sub", "Flatten", "Reshape",
            "Squeeze", "Unsqueeze", "Transpose", "Pad", "Concat", "AveragePool",
            "GlobalAveragePool", "ReduceMean", "ReduceSum")


def _const(t: gs.Tensor) -> np.ndarray | None:
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _spatial(node: gs.Node, in_sp: list[int], out_sp: list[int], kernel: list[int],
             transpose: bool) -> tuple[list[int], list[int], list[int]]:
    """Strides, begin pads and dilations of a Conv/ConvTranspose/pool (auto_pad resolved)."""
    nd = len(kernel)
    strides = list(node.attrs.get("strides", [1] * nd))
    dil = list(node.attrs.get("dilations", [1] * nd))
    pads = list(node.attrs.get("pads", [0] * (2 * nd)))[:nd]
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i, o, k, s, d in zip(in_sp, out_sp, kernel, strides, dil):
            ext = (k - 1) * d + 1
            total = max(0, s * (i - 1) + ext - o) if transpose else max(0, (o - 1) * s + ext - i)
            pads.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    elif auto == "VALID":
        pads = [0] * nd
    return strides, pads, dil


def _hits(n_from: int, n_to: int, k: int, s: int, p: int, d: int) -> np.ndarray:
    """``[k, n_to]``: 1 where window position ``o < n_from`` with offset ``k`` lands on ``y``."""
    hits = np.zeros((k, n_to), np.int64)
    pos = np.arange(n_from)
    for j in range(k):
        y = pos * s - p + j * d
        hits[j, y[(y >= 0) & (y < n_to)]] = 1
    return hits


def _contract(per_channel: np.ndarray, hits: list[np.ndarray]) -> np.ndarray:
    """``[C, K1..Kd]`` contracted with ``hits[d]`` ``[Kd, Sd]`` -> ``[C, S1..Sd]``."""
    out = per_channel.astype(np.int64)
    for h in hits:
        out = np.tensordot(out, h, axes=([1], [0]))
    return out


def conv_fanout(node: gs.Node, in_shape: tuple[int, ...],
                out_shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Fan-out per input neuron ``[C_in, *spatial]`` and dense MACs of a Conv (per sample)."""
    w = _const(node.inputs[1])
    group = int(node.attrs.get("group", 1))
    kernel = list(w.shape[2:])
    strides, pads, dil = _spatial(node, list(in_shape[1:]), list(out_shape[1:]), kernel, False)
    c_out, c_in_g = w.shape[0], w.shape[1]
    nz = (w != 0).reshape(group, c_out // group, c_in_g, *kernel).sum(1)
    nz = nz.reshape(group * c_in_g, *kernel)
    hits = [_hits(o, i, k, s, p, d) for o, i, k, s, p, d
            in zip(out_shape[1:], in_shape[1:], kernel, strides, pads, dil)]
    macs = int(np.prod(out_shape)) * c_in_g * int(np.prod(kernel))
    return _contract(nz, hits), macs


def conv_transpose_fanout(node: gs.Node, in_shape: tuple[int, ...],
                          out_shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Fan-out and dense MACs of a ConvTranspose: input ``y`` scatters to ``y*s - p + k*d``."""
    w = _const(node.inputs[1])
    kernel = list(w.shape[2:])
    strides, pads, dil = _spatial(node, list(in_shape[1:]), list(out_shape[1:]), kernel, True)
    nz = (w != 0).sum(1)  # [C_in, K...]: outputs of the group per input channel and offset
    inside = [_inside(i, o, k, s, p, d) for i, o, k, s, p, d
              in zip(in_shape[1:], out_shape[1:], kernel, strides, pads, dil)]
    macs = int(np.prod(in_shape)) * w.shape[1] * int(np.prod(kernel))
    return _contract(nz, inside), macs


def _inside(n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> np.ndarray:
    """``[k, n_in]``: 1 where input ``y`` with offset ``j`` lands at ``y*s - p + j*d < n_out``."""
    y = np.arange(n_in)[None, :] * s - p + np.arange(k)[:, None] * d
    return ((y >= 0) & (y < n_out)).astype(np.int64)


def dense_fanout(node: gs.Node, in_shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Fan-out and MACs of Gemm (``A`` = data, batch first) or MatMul with a constant ``B``."""
    b = _const(node.inputs[1])
    if node.op == "Gemm" and int(node.attrs.get("transB", 0)):
        b = b.T
    nnz = (b != 0).sum(1)                       # outputs reached by input feature k
    lead = int(np.prod(in_shape[:-1]))
    fan = np.broadcast_to(nnz, in_shape).astype(np.int64)
    return fan, lead * b.shape[0] * b.shape[1]


def is_weight_layer(node: gs.Node) -> bool:
    if node.op not in WEIGHT_OPS or len(node.inputs) < 2:
        return False
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return False
    return _const(node.inputs[1]) is not None and not isinstance(node.inputs[0], gs.Constant)


def layer_fanout(node: gs.Node, shapes: dict[str, tuple[int, ...]]) -> tuple[np.ndarray, int]:
    """Fan-out per input element (per-sample shape) and dense MACs of a weight layer."""
    in_shape = shapes[node.inputs[0].name][1:]
    out_shape = shapes[node.outputs[0].name][1:]
    if node.op == "Conv":
        return conv_fanout(node, in_shape, out_shape)
    if node.op == "ConvTranspose":
        return conv_transpose_fanout(node, in_shape, out_shape)
    return dense_fanout(node, in_shape)


# ------------------------------------------------------------- ops between layers
def _unbroadcast(f_out: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``f_out`` over the axes an input of shape ``in_shape`` was broadcast along."""
    lead = f_out.ndim - len(in_shape)
    f = f_out.sum(tuple(range(lead))) if lead > 0 else f_out
    axes = tuple(a for a, n in enumerate(in_shape) if n == 1 and f.shape[a] != 1)
    return f.sum(axes, keepdims=True) if axes else f


def _pool(node: gs.Node, f_out: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    kernel = list(node.attrs["kernel_shape"])
    strides, pads, dil = _spatial(node, list(in_shape[1:]), list(f_out.shape[1:]), kernel,
                                  False)
    f_in = np.zeros(in_shape, np.int64)
    for offs in itertools.product(*[range(k) for k in kernel]):
        src, dst = [slice(None)], [slice(None)]
        for o_len, i_len, k, s, p, d in zip(f_out.shape[1:], in_shape[1:], offs, strides,
                                           pads, dil):
            y = np.arange(o_len) * s - p + k * d
            ok = (y >= 0) & (y < i_len)
            src.append(np.nonzero(ok)[0])
            dst.append(y[ok])
        f_in[np.ix_(np.arange(in_shape[0]), *dst[1:])] += \
            f_out[np.ix_(np.arange(in_shape[0]), *src[1:])]
    return f_in


def _pad(node: gs.Node, f_out: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray | None:
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _const(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("pads")
    if mode != "constant" or pads is None:
        return None
    rank = len(in_shape) + 1
    axes = _const(node.inputs[3]) if len(node.inputs) > 3 else None
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    begin = dict.fromkeys(range(rank), 0)
    pads = np.asarray(pads).astype(int)
    for j, a in enumerate(axes):
        begin[a] = int(pads[j])
    if begin[0] != 0 or min(pads) < 0:
        return None
    return f_out[tuple(slice(begin[a + 1], begin[a + 1] + n) for a, n in enumerate(in_shape))]


def _concat(node: gs.Node, index: int, f_out: np.ndarray,
            shapes: dict[str, tuple[int, ...]]) -> np.ndarray | None:
    rank = f_out.ndim + 1
    axis = int(node.attrs["axis"]) % rank
    if axis == 0:
        return None
    start = sum(shapes[t.name][axis] for t in node.inputs[:index])
    size = shapes[node.inputs[index].name][axis]
    return np.take(f_out, np.arange(start, start + size), axis=axis - 1)


def _reduce(node: gs.Node, f_out: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = _const(node.inputs[1])
    rank = len(in_shape) + 1
    axes = list(range(rank)) if axes is None else sorted(int(a) % rank for a in axes)
    if 0 in axes:
        return None
    if not int(node.attrs.get("keepdims", 1)):
        f_out = np.expand_dims(f_out, tuple(a - 1 for a in axes))
    return np.broadcast_to(f_out, in_shape)


def _transpose(node: gs.Node, f_out: np.ndarray) -> np.ndarray | None:
    perm = node.attrs.get("perm")
    if perm is None or int(perm[0]) != 0:
        return None
    return f_out.transpose(np.argsort([int(p) - 1 for p in perm[1:]]))


#: The inputs of each op that carry data (the others are shapes, pads, axes).
DATA_INPUTS: dict[str, Callable[[gs.Node], range]] = {
    **{op: (lambda n: range(len(n.inputs))) for op in ("Add", "Sub", "Mul", "Concat")},
    "Div": lambda n: range(1),
}


def data_inputs(node: gs.Node) -> range:
    return DATA_INPUTS.get(node.op, lambda n: range(1))(node)


def glue_fanout(node: gs.Node, index: int, f_out: np.ndarray,
                shapes: dict[str, tuple[int, ...]]) -> np.ndarray | None:
    """The fan-out of input ``index`` of ``node`` given its output's ``f_out``.

    None when this op cannot be followed (the caller names it in its error).
    """
    in_shape = shapes[node.inputs[index].name][1:]
    op = node.op
    if op in ("Identity", "Dropout", "Neg", "Mul", "Div", "Add", "Sub"):
        return _unbroadcast(f_out, in_shape)
    if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
        return f_out.reshape(in_shape)
    if op == "Transpose":
        return _transpose(node, f_out)
    if op == "Pad":
        return _pad(node, f_out, in_shape)
    if op == "Concat":
        return _concat(node, index, f_out, shapes)
    if op == "AveragePool":
        return _pool(node, f_out, in_shape)
    if op == "GlobalAveragePool":
        return np.broadcast_to(f_out, in_shape)
    if op in ("ReduceMean", "ReduceSum"):
        return _reduce(node, f_out, in_shape)
    return None
