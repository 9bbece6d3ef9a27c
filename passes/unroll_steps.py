"""Unroll a one-step streaming SNN over ``T`` steps: one graph, time not merged into the batch.

The streaming graph of :mod:`onnx_rmpe.passes.streaming` computes step ``t`` from the
input and the state of step ``t - 1``. This pass writes ``T`` copies of its nodes into one
graph, chaining copy ``t``'s ``<s>_next`` into copy ``t + 1``'s ``<s>``; copy 1 reads the
states' default values (the initial state). Weights and other constants are shared by all
copies (stored once). The outputs are those of the multi-step SNN::

    <y>            = <y> of the last copy          (running mean after T steps)
    <y>_per_step   = Concat_t Unsqueeze(<y> of copy t)      [T, N, ...]

Each layer runs on ``[N, ...]`` per step, so no tensor holds T steps (no Split, Concat or
tiling per layer) and onnxruntime keeps every step's convolutions in its blocked layout
with their neighbours; the price is ``T`` times the nodes.

Invariant: no state inputs remain; graph inputs are the data inputs; outputs and spikes
equal the multi-step graph's bit for bit (the streaming graph's operations, which are the
multi-step graph's, in the same order).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.passes.base import Names, PassResult
from onnx_rmpe.passes.streaming import NEXT_SUFFIX, PER_STEP_SUFFIX, STEP_SUFFIX

logger = logging.getLogger(__name__)


def unroll_steps(graph: gs.Graph, *, T: int) -> PassResult:
    """Replace a streaming graph by ``T`` chained copies of its step (see module doc)."""
    states = [t for t in graph.inputs if isinstance(t, gs.Constant)]
    if not states or T < 1:
        return PassResult(graph, False)
    data = [t for t in graph.inputs if not isinstance(t, gs.Constant)]
    outs = {t.name: t for t in graph.outputs}
    nexts = {s.name: outs[f"{s.name}{NEXT_SUFFIX}"] for s in states}
    heads = [t for t in graph.outputs if not t.name.endswith((NEXT_SUFFIX, STEP_SUFFIX))]
    nodes = list(graph.toposort().nodes)
    current: dict[str, gs.Tensor] = {s.name: s for s in states}
    per_step: dict[str, list[gs.Tensor]] = {y.name: [] for y in heads}
    new_nodes: list[gs.Node] = []
    for t in range(T):
        copies: dict[int, gs.Tensor] = {}

        def copy(tensor: gs.Tensor, t: int = t, copies: dict = copies,
                 current: dict = current) -> gs.Tensor:
            if isinstance(tensor, gs.Constant):
                return current.get(tensor.name, tensor)
            if tensor in data or not tensor.name:
                return tensor
            if id(tensor) not in copies:
                copies[id(tensor)] = gs.Variable(f"{tensor.name}@{t + 1}", dtype=tensor.dtype)
            return copies[id(tensor)]

        for node in nodes:
            new_nodes.append(gs.Node(node.op, f"{node.name}@{t + 1}", dict(node.attrs),
                                     [copy(i) for i in node.inputs],
                                     [copy(o) for o in node.outputs], domain=node.domain))
        for y in heads:
            per_step[y.name].append(copy(y))
        current = {s.name: copy(nexts[s.name]) for s in states}
    graph.nodes = new_nodes
    graph.inputs = data
    graph.outputs = _outputs(graph, heads, per_step, T)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    logger.info("unrolled %d node(s) per step over T=%d steps", len(nodes), T)
    return PassResult(graph, True)


def _outputs(graph: gs.Graph, heads: list[gs.Tensor], per_step: dict[str, list[gs.Tensor]],
             T: int) -> list[gs.Variable]:
    axis0 = gs.Constant(Names(graph)("unroll_axis0"), np.array([0], np.int64))
    finals, stacks = [], []
    for y in heads:
        steps = per_step[y.name]
        final = gs.Variable(y.name, dtype=np.float32, shape=y.shape)
        graph.nodes.append(gs.Node("Identity", f"{y.name}_final", {}, [steps[-1]], [final]))
        ones = []
        for t, value in enumerate(steps, start=1):
            one = gs.Variable(f"{y.name}_one@{t}", dtype=np.float32)
            graph.nodes.append(gs.Node("Unsqueeze", f"{y.name}_unsqueeze@{t}", {},
                                       [value, axis0], [one]))
            ones.append(one)
        shape = [T, *y.shape] if y.shape is not None else None
        stack = gs.Variable(f"{y.name}{PER_STEP_SUFFIX}", dtype=np.float32, shape=shape)
        graph.nodes.append(gs.Node("Concat", f"{y.name}_per_step_concat", {"axis": 0}, ones,
                                   [stack]))
        finals.append(final)
        stacks.append(stack)
    return finals + stacks
