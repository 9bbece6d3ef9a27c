"""Rewrite op forms of old exporters into the ops the converter handles.

* ``Sum(x1, ..., xk)`` (n-ary add; the Caffe2 model zoo writes residual joins this way)
  becomes ``Add(...Add(Add(x1, x2), x3)..., xk)``; a one-input ``Sum`` is an identity and
  is removed. Addition is linear, so the chain runs on spikes like any residual ``Add``.
* An identity ``MaxPool`` (every kernel size 1, every stride 1, no padding, dilation 1, no
  index output) is removed: ``MaxPool_1x1(x) = x``. Left in place it would get the
  cumulative running-sum form of a real pool, which costs time and gains nothing.

Invariant: the graph computes the same function exactly; no ``Sum`` and no identity
``MaxPool`` remains; graph output names are kept.
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from onnx_rmpe.passes.base import Names, PassResult, producer, replace_uses, skip

logger = logging.getLogger(__name__)


def simplify_ops(graph: gs.Graph) -> PassResult:
    """Expand ``Sum`` into ``Add`` chains and remove identity max pools."""
    names = Names(graph)
    sums = [n for n in graph.nodes if n.op == "Sum"]
    pools = [n for n in graph.nodes if is_identity_maxpool(n)]
    removed = 0
    for node in sums:
        if len(node.inputs) == 1:
            removed += _bypass(graph, node)
        else:
            _expand_sum(graph, node, names)
    for node in pools:
        removed += _bypass(graph, node)
    if sums or removed:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        logger.info("expanded %d Sum node(s) into Add, removed %d identity node(s)",
                    len(sums), removed)
    return PassResult(graph, bool(sums) or removed > 0)


def is_identity_maxpool(node: gs.Node) -> bool:
    """A MaxPool with 1x1 kernel, stride 1, no padding and no index output."""
    if node.op != "MaxPool" or len(node.outputs) != 1:
        return False
    attrs = node.attrs
    kernel = list(attrs.get("kernel_shape", []))
    ones = len(kernel) * [1]
    return (bool(kernel) and kernel == ones
            and list(attrs.get("strides", ones)) == ones
            and list(attrs.get("dilations", ones)) == ones
            and not any(attrs.get("pads", []))
            and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID", b"NOTSET", b"VALID"))


def _expand_sum(graph: gs.Graph, node: gs.Node, names: Names) -> None:
    acc = node.inputs[0]
    last = len(node.inputs) - 1
    for i, t in enumerate(node.inputs[1:], start=1):
        out = node.outputs[0] if i == last else gs.Variable(names(f"{node.name}_partial{i}"),
                                                             dtype=node.outputs[0].dtype)
        name = node.name if i == last else names(f"{node.name}_add{i}")
        graph.nodes.append(gs.Node("Add", name, inputs=[acc, t], outputs=[out]))
        acc = out
    node.inputs.clear()
    node.outputs.clear()


def _bypass(graph: gs.Graph, node: gs.Node) -> int:
    """Remove a one-input identity node; 0 if its input cannot take its output's place."""
    inp, out = node.inputs[0], node.outputs[0]
    if out in graph.outputs:
        src = producer(inp)
        if src is None or inp in graph.outputs or len(inp.outputs) != 1:
            skip(f"{node.op} {node.name} kept: an identity, but its input cannot take the "
                 f"name of graph output {out.name} (a graph input, another output, or used "
                 "elsewhere)")
            return 0
        src.outputs[src.outputs.index(inp)] = out
    else:
        replace_uses(out, inp)
    node.inputs.clear()
    node.outputs.clear()
    return 1
