"""Bring a Softmax readout to the graph output it feeds through shape-only ops.

A spiking network applies ``Softmax``/``LogSoftmax`` to the time-averaged logits, so the
converter needs it right before a graph output. Old exporters, and onnx's own opset
upgrade of an opset < 13 Softmax (which becomes ``Flatten -> Softmax -> Reshape``), leave
shape-only ops (``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Identity``) after
it. When the logits hold one class axis of size ``C`` and every other non-batch axis has
size 1, both before and after those ops, reshaping commutes with the softmax::

    reshape(softmax(z, axis=a)) = softmax(reshape(z), axis=k)

where ``k`` is the axis of size ``C`` of the output. This pass moves the softmax behind
the shape ops on that condition (the node keeps its name, the output keeps its name).

Invariant: the graph computes the same function exactly; a Softmax/LogSoftmax whose only
way to a graph output is through shape-only ops on ``[N, C, 1, ...]``-like logits now
produces that output directly.
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from onnx_rmpe.passes.base import PassResult, producer, skip

logger = logging.getLogger(__name__)

SOFTMAX_OPS = ("Softmax", "LogSoftmax")
SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def sink_readout(graph: gs.Graph) -> PassResult:
    """Move every Softmax-like readout behind the shape-only ops between it and an output."""
    moved = 0
    for y in list(graph.outputs):
        chain = _shape_chain(graph, y)
        if not chain:
            continue
        head = producer(chain[-1].inputs[0])
        if head is None or head.op not in SOFTMAX_OPS:
            continue
        if len(head.outputs[0].outputs) != 1:
            skip(f"{head.op} {head.name} kept: its output also feeds other nodes than the "
                 f"shape ops to {y.name}")
            continue
        axis = _class_axis(head, y)
        if axis is None:
            skip(f"{head.op} {head.name} kept: the shape ops to {y.name} do not keep one "
                 "class axis with all other non-batch axes of size 1")
            continue
        first, last = chain[-1], chain[0]
        logits = gs.Variable(f"{head.name}_logits", dtype=y.dtype)
        first.inputs[0] = head.inputs[0]
        last.outputs[0] = logits
        head.inputs[0] = logits
        head.outputs[0] = y
        head.attrs["axis"] = axis
        moved += 1
        logger.debug("moved %s '%s' behind %d shape op(s)", head.op, head.name, len(chain))
    if moved:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        logger.info("moved %d softmax readout(s) to the graph output", moved)
    return PassResult(graph, moved > 0)


def _shape_chain(graph: gs.Graph, y: gs.Tensor) -> list[gs.Node]:
    """The shape-only nodes from ``y`` back to the first non-shape node (output first)."""
    chain: list[gs.Node] = []
    t = y
    while True:
        node = producer(t)
        if node is None or node.op not in SHAPE_ONLY:
            return chain
        if t is not y and (len(t.outputs) != 1 or t in graph.outputs):
            return []
        chain.append(node)
        t = node.inputs[0]


def _class_axis(head: gs.Node, y: gs.Tensor) -> int | None:
    """The axis of ``y`` that carries the classes, if the rewrite is exact; else None."""
    shape_in = head.inputs[0].shape
    if not shape_in or len(shape_in) < 2 or not y.shape or len(y.shape) < 2:
        return None
    a = int(head.attrs.get("axis", -1))
    a = a + len(shape_in) if a < 0 else a
    classes = _single_axis(shape_in)
    out = _single_axis(y.shape)
    if classes is None or out is None or classes != a:
        return None
    if shape_in[classes] != y.shape[out]:
        return None
    return out


def _single_axis(shape) -> int | None:
    """The one non-batch axis of size > 1 (all other non-batch sizes known and 1)."""
    rest = list(shape[1:])
    if not all(isinstance(d, int) for d in rest):
        return None
    big = [i + 1 for i, d in enumerate(rest) if d != 1]
    return big[0] if len(big) == 1 else None
