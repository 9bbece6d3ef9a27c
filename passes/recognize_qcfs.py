"""Recognize QCFS activations written as primitive ops and fold each into one QCFS node.

A QCFS activation trained in Keras (exported by tf2onnx) or in PyTorch (either exporter)
reaches ONNX as primitive ops, in one of many equivalent forms, for example::

    Mul(x, L) -> Div(lam) -> Add(phi) -> Floor -> Div(L) -> Clip(0, 1) -> Mul(lam)     torch
    Mul(x, L/lam) -> Add(phi) -> Transpose -> Floor -> Mul(1/L) -> Min(1) -> Max(0) -> Mul(lam)
                                                                                 tf2onnx

This pass anchors on each ``Floor`` node and reads the math, not the op sequence:

* backwards from the Floor, a chain of affine ops with scalar constants (Mul, Div, Add,
  Sub, Neg; Transpose commutes with them) gives ``u = s * x + b``;
* forwards, a chain of elementwise ops with scalar constants (the affine ones plus Clip,
  Max, Min, Relu) gives ``y = f(floor(u))``, evaluated on the integers.

It is a QCFS exactly when, for some ``lam > 0`` and integer ``L >= 1``::

    f(n) = lam * clip(n / L, 0, 1)  for every integer n,   s = L / lam,   b = phi

``lam`` is ``f(+inf)``, ``L = lam / (f(1) - f(0))``; both are checked on ``n = -3..L+3``
(relative tolerance 1e-4). The longest forward chain and, for it, the shortest backward
chain that fit are taken, so neighbouring scalar ops of other layers stay where they are. The
straight-through form of the floor, ``u + (floor(u) - u)`` (what ``x + stop_gradient(...)``
or ``.detach()`` exports to), is first reduced to ``floor(u)``.

Invariant: the graph computes the same function; every recognized pattern is one
``onnx_rmpe::QCFS`` node (attributes ``levels``, ``phi``; threshold constant
``<node>.lam``), followed by the pattern's Transposes if it had any, and preceded by a
``Mul`` by ``s * lam / L`` where the exporter folded the scale ``L / lam`` into the layer
before (tf2onnx merges a scalar Mul into Conv weights). A Floor that does
not fit is left alone (the reason is logged) and :func:`check_supported` reports it.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.ops import DOMAIN, QCFS_OP
from onnx_rmpe.passes.base import Names, PassResult, const_value, producer, skip

logger = logging.getLogger(__name__)

AFFINE_OPS = ("Mul", "Div", "Add", "Sub", "Neg")
CLIP_OPS = ("Clip", "Max", "Min", "Relu")
LAYOUT_OPS = ("Transpose",)
_RTOL = 1e-4
_MAX_LEVELS = 4096


def recognize_qcfs(graph: gs.Graph) -> PassResult:
    """Fold every primitive-op QCFS pattern (anchored on a ``Floor``) into a QCFS node."""
    changed = _collapse_straight_through(graph)
    found = 0
    for floor in [n for n in graph.nodes if n.op == "Floor" and _is_default(n)]:
        if not floor.outputs or not floor.inputs:
            continue  # consumed by an earlier rewrite
        match, reason = _match(graph, floor)
        if match is None:
            logger.info("Floor node '%s' is not a QCFS activation: %s", floor.name, reason)
            skip(f"Floor {floor.name} kept: not a QCFS activation ({reason})")
            continue
        _rewrite(graph, floor, *match)
        found += 1
    if found:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        logger.info("recognized %d QCFS activation(s) written as primitive ops", found)
    return PassResult(graph, changed or found > 0)


def _is_default(node: gs.Node) -> bool:
    return node.domain in ("", "ai.onnx", None)


def _collapse_straight_through(graph: gs.Graph) -> bool:
    """``Add(u, Sub(Floor(u), u))`` (either Add order) becomes ``Floor(u)``."""
    collapsed = 0
    for add in [n for n in graph.nodes if n.op == "Add" and len(n.inputs) == 2]:
        for u, d in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
            sub = producer(d)
            if sub is None or sub.op != "Sub" or sub.inputs[1] is not u or len(d.outputs) != 1:
                continue
            floor = producer(sub.inputs[0])
            if floor is None or floor.op != "Floor" or floor.inputs[0] is not u:
                continue
            out, f_out = add.outputs[0], floor.outputs[0]
            for consumer in list(out.outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is out:
                        consumer.inputs[i] = f_out
            if out in graph.outputs:
                graph.outputs[graph.outputs.index(out)] = f_out
            for node in (add, sub):
                node.inputs.clear()
                node.outputs.clear()
            collapsed += 1
            break
    if collapsed:
        graph.cleanup(remove_unused_graph_inputs=False)
        logger.info("reduced %d straight-through floor(s) to Floor", collapsed)
    return collapsed > 0


def _scalar_operand(node: gs.Node) -> tuple[gs.Tensor | None, float | None, int]:
    """``(data input, scalar constant, data index)`` of an elementwise chain node."""
    if node.op in ("Neg", "Relu", "Transpose"):
        return node.inputs[0], None, 0
    if node.op == "Clip":
        if const_value(node.inputs[0]) is not None:
            return None, None, -1
        return node.inputs[0], None, 0
    if len(node.inputs) != 2:
        return None, None, -1
    values = [const_value(t) for t in node.inputs]
    for idx in (0, 1):
        other = values[1 - idx]
        if values[idx] is None and other is not None and other.size == 1 and other.ndim <= 4:
            if node.op == "Div" and idx == 1:
                return None, None, -1  # c / x is not affine
            return node.inputs[idx], float(other.reshape(())), idx
    return None, None, -1


def _apply(node: gs.Node, v: np.ndarray) -> np.ndarray:
    """The node's elementwise function on float64 values ``v`` (its data input)."""
    op = node.op
    if op in ("Transpose",):
        return v
    if op == "Neg":
        return -v
    if op == "Relu":
        return np.maximum(v, 0.0)
    if op == "Clip":
        lo = _clip_bound(node, 1, "min", -np.inf)
        hi = _clip_bound(node, 2, "max", np.inf)
        return np.clip(v, lo, hi)
    _, c, idx = _scalar_operand(node)
    if op == "Mul":
        return v * c
    if op == "Div":
        return v / c
    if op == "Add":
        return v + c
    if op == "Sub":
        return v - c if idx == 0 else c - v
    if op == "Max":
        return np.maximum(v, c)
    return np.minimum(v, c)  # Min


def _clip_bound(node: gs.Node, idx: int, attr: str, default: float) -> float:
    if len(node.inputs) > idx and node.inputs[idx].name:
        v = const_value(node.inputs[idx])
        if v is None:
            raise ValueError("data-dependent Clip bound")
        return float(v.reshape(()))
    return float(node.attrs.get(attr, default))


def _chain_node(node: gs.Node | None, ops: tuple[str, ...]) -> bool:
    if node is None or not _is_default(node) or node.op not in ops or len(node.outputs) != 1:
        return False
    data, _, idx = _scalar_operand(node)
    if data is None or idx < 0:
        return False
    if node.op == "Clip":
        try:
            _clip_bound(node, 1, "min", 0.0), _clip_bound(node, 2, "max", 0.0)
        except ValueError:
            return False
    return True


def _private(graph: gs.Graph, t: gs.Tensor) -> bool:
    """``t`` is read by exactly one node and is not a graph output."""
    return len(t.outputs) == 1 and t not in graph.outputs


def _backward_chain(graph: gs.Graph, floor: gs.Node) -> list[gs.Node]:
    """Affine nodes feeding the Floor, nearest first, each output private to the chain."""
    chain, t = [], floor.inputs[0]
    while _private(graph, t):
        node = producer(t)
        if not _chain_node(node, AFFINE_OPS + LAYOUT_OPS):
            break
        chain.append(node)
        t = _scalar_operand(node)[0]
    return chain


def _forward_chain(graph: gs.Graph, floor: gs.Node) -> list[gs.Node]:
    """Elementwise nodes after the Floor, nearest first; inner outputs private."""
    chain, t = [], floor.outputs[0]
    while _private(graph, t):
        node = t.outputs[0]
        if not _chain_node(node, AFFINE_OPS + CLIP_OPS + LAYOUT_OPS) or \
                _scalar_operand(node)[0] is not t:
            break
        chain.append(node)
        t = node.outputs[0]
    return chain


def _affine(chain: list[gs.Node]) -> tuple[float, float]:
    """``(s, b)`` with ``chain(x) = s * x + b`` (chain listed nearest-to-Floor first)."""
    v = np.array([0.0, 1.0])
    for node in reversed(chain):
        v = _apply(node, v)
    return float(v[1] - v[0]), float(v[0])


def _as_qcfs(chain: list[gs.Node], s: float | None) -> tuple[float, int] | None:
    """``(lam, L)`` if ``chain(floor value n)`` is ``lam * clip(n / L, 0, 1)`` and ``s = L/lam``
    (``s`` None: any scale)."""
    def f(n: np.ndarray) -> np.ndarray:
        v = n.astype(np.float64)
        for node in chain:
            v = _apply(node, v)
        return v
    lam = float(f(np.array([1e9]))[0])
    step = float(np.diff(f(np.array([0.0, 1.0])))[0])
    if not (np.isfinite(lam) and lam > 0 and step > 0):
        return None
    levels = round(lam / step)
    if not 1 <= levels <= _MAX_LEVELS or abs(levels - lam / step) > _RTOL * levels:
        return None
    n = np.arange(-3, levels + 4, dtype=np.float64)
    want = lam * np.clip(n / levels, 0.0, 1.0)
    if not np.allclose(f(n), want, rtol=_RTOL, atol=_RTOL * lam):
        return None
    if s is not None and not np.isclose(s, levels / lam, rtol=_RTOL, atol=0.0):
        return None
    return lam, levels


def _match(graph: gs.Graph, floor: gs.Node):
    back, fwd = _backward_chain(graph, floor), _forward_chain(graph, floor)
    if not back:
        return None, "no scaling by constants in front of it"
    for nf in range(len(fwd), 0, -1):               # longest forward chain first
        for nb in range(1, len(back) + 1):          # then the shortest backward chain
            s, b = _affine(back[:nb])
            fit = _as_qcfs(fwd[:nf], s)
            if fit is not None and -1e-6 <= b <= 1 + 1e-6:
                return (back, nb, fwd[:nf], fit[0], fit[1], b, 1.0), ""
    # the exporter folded the scale L / lam into the layer before (tf2onnx merges a scalar
    # Mul into Conv weights): keep the function with a rescaling Mul in front of the QCFS
    s, b = _affine(back)
    for nf in range(len(fwd), 0, -1):
        fit = _as_qcfs(fwd[:nf], None)
        if fit is not None and s > 0 and -1e-6 <= b <= 1 + 1e-6:
            return (back, len(back), fwd[:nf], fit[0], fit[1], b, s * fit[0] / fit[1]), ""
    return None, (f"the {len(back)} op(s) before and {len(fwd)} after it do not compute "
                  "lam * clip(floor(x * L / lam + phi) / L, 0, 1)")


def _rewrite(graph: gs.Graph, floor: gs.Node, all_back: list[gs.Node], nb: int,
             fwd: list[gs.Node], lam: float, levels: int, phi: float, rescale: float) -> None:
    back = all_back[:nb]
    x = _scalar_operand(back[-1])[0]
    fresh = Names(graph)
    if rescale != 1.0:  # x * s * lam / L is the true QCFS input
        scaled = gs.Variable(fresh(f"{floor.name}_input"), dtype=np.float32)
        graph.nodes.append(gs.Node("Mul", fresh(f"{floor.name}_rescale"), inputs=[
            x, gs.Constant(fresh(f"{floor.name}.scale"), np.array(rescale, np.float32))],
            outputs=[scaled]))
        x = scaled
    y = fwd[-1].outputs[0]
    transposes = [n for n in reversed(back) if n.op in LAYOUT_OPS] + \
                 [n for n in fwd if n.op in LAYOUT_OPS]
    for node in back + fwd:
        if node.op not in LAYOUT_OPS:
            node.inputs.clear()
            node.outputs.clear()
    floor.name = floor.name or fresh("QCFS")
    floor.op, floor.domain = QCFS_OP, DOMAIN
    floor.attrs = {"levels": int(levels), "phi": float(round(phi, 6))}
    floor.inputs.clear()
    floor.inputs.extend([x, gs.Constant(fresh(f"{floor.name}.lam"), np.array(lam, np.float32))])
    t = y if not transposes else gs.Variable(fresh(f"{floor.name}_out"), dtype=np.float32)
    floor.outputs.clear()
    floor.outputs.append(t)
    for i, tr in enumerate(transposes):
        tr.inputs.clear()
        tr.inputs.append(t)
        last = i == len(transposes) - 1
        t = y if last else gs.Variable(fresh(f"{tr.name}_out"), dtype=np.float32)
        tr.outputs.clear()
        tr.outputs.append(t)
    logger.debug("QCFS at '%s': lam=%g, L=%d, phi=%g (%d+%d ops folded)", floor.name, lam,
                 levels, phi, len(back), len(fwd))
