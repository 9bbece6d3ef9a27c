"""Per-channel QCFS thresholds, written as one threshold per layer on rescaled channels.

A QCFS layer has one threshold ``lam``; its channels may not share one range. When the
layer after it is per-channel (a BatchNormalization on a DenseNet Concat, a depthwise
Conv of MobileNetV2) a channel whose values stay far below ``lam`` gets a few of the
``L`` levels, and its error is amplified by that channel's own weight. A threshold
``lam_c`` per channel removes this. QCFS (and the IF neuron that replaces it) is
positively homogeneous per channel::

    lam_c * q(z / lam_c)  =  (1 / s_c) * lam * q(s_c * z / lam)     s_c = lam / lam_c > 0

(``q(u) = clip(floor(u * L + phi) / L, 0, 1)``), so the per-channel QCFS equals the
layer's QCFS with threshold ``lam`` when the layer that produces ``z`` scales its output
channel ``c`` by ``s_c`` (Conv/Gemm weights and bias, BatchNormalization gamma and beta;
through Max/AveragePools, which commute with a positive scale) and every layer that reads
the activation scales its input channel ``c`` by ``1 / s_c`` (Conv weights of that input
channel, any group; Gemm rows; BatchNormalization ``gamma' = gamma / s``,
``mean' = mean * s``; through pools, Identity, Flatten of a 1x1 map and Concat on the
channel axis; with ``through_shuffle``, through a ShuffleNet channel shuffle
``Reshape([N, g, C/g, H, W]) -> Transpose(0, 2, 1, 3, 4) -> Reshape([N, C, H, W])``, which
only permutes the channels, the factors follow the permutation: output channel
``j = k * g + i`` is input channel ``i * C/g + k``). A layer whose producer or readers are
anything else (an Add, a graph output, another shape op) is left as it is (logged at DEBUG
with the reason).

Invariant: the QCFS graph computes the same function (to float rounding), with the
per-channel thresholds ``min(lam_c, cap)`` given; every QCFS node keeps one scalar
threshold, so the IF conversion, the threshold search and RMPE calibration run unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.ops import DOMAIN, QCFS_OP
from onnx_rmpe.passes.base import PassResult, const_value, skip

logger = logging.getLogger(__name__)

#: Channel scales are clipped to [1 / MAX_SCALE, MAX_SCALE] (rare values are noisy).
MAX_SCALE = 64.0
_POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
_THROUGH = (*_POOLS, "Identity", "Dropout")


def equalize_channels(graph: gs.Graph, *, ranges: Mapping[str, np.ndarray],
                      through_shuffle: bool = False) -> PassResult:
    """Rescale the channels of each QCFS node named in ``ranges`` (node name -> ``lam_c``).

    ``through_shuffle`` (off by default): also rescale layers read through a channel
    shuffle. Measured on the ShuffleNet-like Fashion-MNIST net (BENCHMARKS.md, issue 16
    round five): the QCFS ANN gains 2 points (81.1 -> 83.1 %) but the SNN does not
    (default T=4 68.2 vs 68.7 %, first 2000 test images) and plain conversion converges
    slower (T=16 37.9 vs 67.1 %).
    """
    done = 0
    for node in [n for n in graph.nodes if n.domain == DOMAIN and n.op == QCFS_OP]:
        if node.name not in ranges:
            continue
        lam = float(np.asarray(const_value(node.inputs[1])).reshape(()))
        lam_c = np.asarray(ranges[node.name], np.float64)
        scale = np.where(np.isfinite(lam_c) & (lam_c > 0), lam / np.maximum(lam_c, 1e-30), 1.0)
        scale = np.clip(scale, 1 / MAX_SCALE, MAX_SCALE)
        if _apply(node, scale, {t.name for t in graph.outputs}, through_shuffle):
            done += 1
    if done:
        logger.info("per-channel thresholds: rescaled the channels of %d QCFS layer(s)", done)
    return PassResult(graph, done > 0)


def _apply(node: gs.Node, scale: np.ndarray, outputs: set[str], shuffle: bool) -> bool:
    """Scale ``node``'s input channels by ``scale`` and its readers' by ``1 / scale``."""
    source = _source(node.inputs[0], scale.size, outputs)
    if isinstance(source, str):
        skip(f"QCFS {node.name}: channels not rescaled: {source}")
        return False
    readers: list[tuple[gs.Node, np.ndarray]] = []
    reason = _readers(node.outputs[0], 1.0 / scale, readers, outputs, shuffle)
    if reason:
        skip(f"QCFS {node.name}: channels not rescaled: {reason}")
        return False
    _scale_output(source, scale)
    for reader, factor in readers:
        _scale_input(reader, factor)
    return True


def _source(tensor: gs.Tensor, size: int, outputs: set[str]) -> gs.Node | str:
    """The Conv/Gemm/BatchNormalization whose output channels make ``tensor`` (or why not)."""
    while True:
        if len(tensor.outputs) != 1 or not tensor.inputs or tensor.name in outputs:
            return f"'{tensor.name}' is read by {len(tensor.outputs)} nodes or is an input"
        node = tensor.inputs[0]
        if node.op in _POOLS:
            tensor = node.inputs[0]
            continue
        if node.op in ("Conv", "BatchNormalization") and _consts(node, 1, size, 0):
            return node
        if node.op == "Gemm" and _consts(node, 1, None, None) \
                and not int(node.attrs.get("transA", 0)):
            return node
        return f"it is made by {node.op} '{node.name}'"


def _consts(node: gs.Node, first: int, size: int | None, axis: int | None) -> bool:
    values = [const_value(t) for t in node.inputs[first:]]
    if any(v is None for v in values):
        return False
    return size is None or values[0].shape[axis] == size


def _readers(tensor: gs.Tensor, factor: np.ndarray, found: list,
             outputs: set[str], shuffle: bool = False) -> str | None:
    """Collect the (node, input-channel factor) pairs that absorb ``factor``."""
    if tensor.name in outputs:
        return f"'{tensor.name}' is a graph output"
    for node in {id(n): n for n in tensor.outputs}.values():
        if node.op == "Concat":
            reason = _concat(node, tensor, factor, found, outputs, shuffle)
        elif node.inputs[0] is not tensor or any(t is tensor for t in node.inputs[1:]):
            reason = f"'{tensor.name}' is not only the first input of {node.op} '{node.name}'"
        elif node.op in _THROUGH or (node.op == "Flatten" and _is_1x1(tensor)):
            reason = _readers(node.outputs[0], factor, found, outputs, shuffle)
        elif shuffle and node.op == "Reshape" and isinstance(
                permuted := _shuffle(node, factor.size, outputs), tuple):
            out, order = permuted  # channel j of the shuffle's output is input channel order[j]
            reason = _readers(out, factor[order], found, outputs, shuffle)
        elif node.op in ("Conv", "BatchNormalization", "Gemm") and _absorbs(node, factor.size):
            found.append((node, factor))
            reason = None
        else:
            reason = f"it is read by {node.op} '{node.name}'"
        if reason:
            return reason
    return None


def _concat(node: gs.Node, tensor: gs.Tensor, factor: np.ndarray, found: list,
            outputs: set[str], shuffle: bool) -> str | None:
    rank = len(tensor.shape) if tensor.shape is not None else 0
    if rank < 2 or int(node.attrs.get("axis", 1)) % rank != 1:
        return f"Concat '{node.name}' is not on the channel axis"
    sizes = [t.shape[1] if t.shape is not None and len(t.shape) == rank else None
             for t in node.inputs]
    if any(not isinstance(c, int) for c in sizes):
        return f"Concat '{node.name}' has inputs of unknown channel count"
    full = np.ones(sum(sizes))
    for i, t in enumerate(node.inputs):
        if t is tensor and sizes[i] != factor.size:
            return f"Concat '{node.name}' input {i} has {sizes[i]} channels, not {factor.size}"
        if t is tensor:
            start = sum(sizes[:i])
            full[start:start + sizes[i]] *= factor
    return _readers(node.outputs[0], full, found, outputs, shuffle)


def _shuffle(node: gs.Node, size: int, outputs: set[str]) -> tuple[gs.Tensor, np.ndarray] | None:
    """A channel shuffle ``Reshape([N, g, C/g, H, W]) -> Transpose(0, 2, 1, 3, 4) ->
    Reshape([N, C, H, W])`` starting at ``node``: its output and the channel order."""
    first = const_value(node.inputs[1])
    if first is None or first.ndim != 1 or len(first) != 5 or first[1] * first[2] != size:
        return None
    chain = [node]
    for op in ("Transpose", "Reshape"):
        out = chain[-1].outputs[0]
        if len(out.outputs) != 1 or out.name in outputs or out.outputs[0].op != op \
                or out.outputs[0].inputs[0] is not out:
            return None
        chain.append(out.outputs[0])
    perm = list(chain[1].attrs.get("perm", []))
    last = const_value(chain[2].inputs[1])
    if perm != [0, 2, 1, 3, 4] or last is None or last.ndim != 1 or len(last) != 4 \
            or last[1] != size:
        return None
    groups = int(first[1])
    return chain[2].outputs[0], np.arange(size).reshape(groups, size // groups).T.reshape(-1)


def _is_1x1(tensor: gs.Tensor) -> bool:
    shape = tensor.shape
    return shape is not None and len(shape) >= 2 and all(d == 1 for d in shape[2:])


def _absorbs(node: gs.Node, size: int) -> bool:
    w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return False
    if node.op == "Conv":
        return w.shape[1] * int(node.attrs.get("group", 1)) == size
    if node.op == "Gemm":
        rows = w.shape[1] if int(node.attrs.get("transB", 0)) else w.shape[0]
        return w.ndim == 2 and rows == size and not int(node.attrs.get("transA", 0))
    return w.size == size and all(const_value(t) is not None for t in node.inputs[1:5])


def _set(node: gs.Node, idx: int, value: np.ndarray, tag: str) -> None:
    node.inputs[idx] = gs.Constant(f"{node.name}.{tag}{idx}", value.astype(np.float32))


def _scale_output(node: gs.Node, s: np.ndarray) -> None:
    """Multiply output channel ``c`` of ``node`` by ``s[c]``."""
    if node.op == "BatchNormalization":
        for idx in (1, 2):  # gamma, beta
            _set(node, idx, const_value(node.inputs[idx]) * s, "eq_out")
        return
    w = const_value(node.inputs[1]).astype(np.float64)
    if node.op == "Conv":
        _set(node, 1, w * s.reshape((-1,) + (1,) * (w.ndim - 1)), "eq_out")
    elif int(node.attrs.get("transB", 0)):
        _set(node, 1, w * s[:, None], "eq_out")
    else:
        _set(node, 1, w * s[None, :], "eq_out")
    if len(node.inputs) > 2 and node.inputs[2].name:  # Conv bias [C]; Gemm C: [N], [1, N], []
        _set(node, 2, const_value(node.inputs[2]).astype(np.float64) * s, "eq_out")


def _scale_input(node: gs.Node, f: np.ndarray) -> None:
    """Multiply input channel ``c`` of ``node`` by ``f[c]`` (folded into its constants)."""
    if node.op == "BatchNormalization":  # bn(f x) = gamma f (x - mean / f) / sd + beta
        _set(node, 1, const_value(node.inputs[1]) * f, "eq_in")
        _set(node, 3, const_value(node.inputs[3]) / f, "eq_in")
        return
    w = const_value(node.inputs[1]).astype(np.float64)
    if node.op == "Conv":
        groups = int(node.attrs.get("group", 1))
        cout, cg = w.shape[0], w.shape[1]
        per_out = f.reshape(groups, 1, cg).repeat(cout // groups, axis=1).reshape(cout, cg)
        _set(node, 1, w * per_out.reshape((cout, cg) + (1,) * (w.ndim - 2)), "eq_in")
    elif int(node.attrs.get("transB", 0)):
        _set(node, 1, w * f[None, :], "eq_in")
    else:
        _set(node, 1, w * f[:, None], "eq_in")


__all__ = ["MAX_SCALE", "equalize_channels"]
