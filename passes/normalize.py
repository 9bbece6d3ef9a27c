"""Normalize an imported graph before conversion.

Rewrites, none of which changes the function the graph computes for any batch size:

* Identity and Dropout (inference: identity) are removed; graph output names are kept.
* Constant subgraphs are folded (onnx-graphsurgeon, evaluated with onnxruntime).
* Reshape targets with a hard-coded batch size become ``-1`` in the first position (the
  trailing ``-1``, if any, is replaced by its value from shape inference), so the model
  runs for any batch and, after time is merged into the batch, for ``T*N``.
* Every node gets a unique name, which later passes and reports use.

Invariant after this pass: no Identity or Dropout, no Reshape with a fixed batch, every
node named.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.passes.base import (
    PassResult,
    classify_tensors,
    const_value,
    name_nodes,
    producer,
    replace_uses,
)

logger = logging.getLogger(__name__)

PASSTHROUGH = ("Identity", "Dropout")


def normalize(graph: gs.Graph) -> PassResult:
    """Remove pass-through nodes, fold constants, free hard-coded batch sizes, name nodes."""
    before = len(graph.nodes)
    changed = _remove_passthrough(graph)
    graph.fold_constants(error_ok=True).cleanup(remove_unused_graph_inputs=False)
    changed |= len(graph.nodes) != before
    changed |= _free_reshape_batch(graph)
    changed |= name_nodes(graph)
    graph.toposort()
    return PassResult(graph, changed)


def _remove_passthrough(graph: gs.Graph) -> bool:
    removed = 0
    for node in [n for n in graph.nodes if n.op in PASSTHROUGH]:
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
            continue  # the mask is used: leave the node alone
        inp, out = node.inputs[0], node.outputs[0]
        if out in graph.outputs:
            src = producer(inp)
            if src is None or inp in graph.outputs or inp in graph.inputs:
                continue
            for consumer in list(inp.outputs):
                if consumer is not node:
                    consumer.inputs[consumer.inputs.index(inp)] = out
            src.outputs[src.outputs.index(inp)] = out
        else:
            replace_uses(out, inp)
        node.inputs.clear()
        node.outputs.clear()
        removed += 1
    if removed:
        graph.cleanup(remove_unused_graph_inputs=False)
        logger.info("removed %d Identity/Dropout node(s)", removed)
    return removed > 0


def _free_reshape_batch(graph: gs.Graph) -> bool:
    changed = False
    kinds = classify_tensors(graph)
    for node in graph.nodes:
        if node.op != "Reshape" or kinds.get(node.inputs[0].name) != "data":
            continue
        target = const_value(node.inputs[1])
        if target is None or target.ndim != 1 or target.size == 0 or target[0] in (-1, 0):
            continue
        new = target.astype(np.int64).copy()
        if -1 in new[1:]:
            known = _trailing_size(node.inputs[0])
            rest = [d for d in new[1:] if d != -1]
            if known is None or any(d == 0 for d in rest):
                continue  # cannot tell: leave it, a later batch change may fail loudly
            new[1:][new[1:] == -1] = known // int(np.prod(rest, dtype=np.int64))
        new[0] = -1
        node.inputs[1] = gs.Constant(f"{node.name}_shape", new)
        logger.debug("Reshape %s: batch %d -> -1", node.name, int(target[0]))
        changed = True
    return changed


def _trailing_size(tensor: gs.Tensor) -> int | None:
    shape = tensor.shape
    if not shape or any(not isinstance(d, (int, np.integer)) for d in shape[1:]):
        return None
    return int(np.prod(shape[1:], dtype=np.int64))
