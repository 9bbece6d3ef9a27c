"""The invariants the pass docstrings state, as checks (``GraphPass.ensures``).

Each function takes the graph a pass returned and raises
:class:`~onnx_rmpe.errors.InvariantError` when the invariant of that pass's docstring does
not hold. They only read the graph (no renaming, no reordering). :class:`Sequential` runs
them when checks are on (tests, ``ONNX_RMPE_CHECK=1``).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.ops import DOMAIN, IF_OP, QCFS_OP
from onnx_rmpe.passes.base import const_value, require
from onnx_rmpe.passes.normalize import PASSTHROUGH
from onnx_rmpe.passes.relu_to_qcfs import _as_site, output_activations
from onnx_rmpe.passes.simplify_ops import is_identity_maxpool


def _ops(graph: gs.Graph, *ops: str) -> list[str]:
    return [f"{n.op} {n.name}" for n in graph.nodes if n.op in ops]


def after_normalize(graph: gs.Graph) -> None:
    """No Identity or Dropout whose removal was possible, every node named uniquely."""
    names = [n.name for n in graph.nodes]
    require(all(names), "normalize: a node has no name")
    require(len(set(names)) == len(names), "normalize: node names are not unique")
    left = [f"{n.op} {n.name}" for n in graph.nodes if n.op in PASSTHROUGH
            and not any(t in graph.outputs or t in graph.inputs for t in n.inputs)
            and not (n.op == "Dropout" and len(n.outputs) > 1 and n.outputs[1].outputs)]
    require(not left, f"normalize: pass-through node(s) remain: {left}")


def after_simplify_ops(graph: gs.Graph) -> None:
    """No Sum and no identity MaxPool remains."""
    left = _ops(graph, "Sum") + [n.name for n in graph.nodes if n.op == "MaxPool"
                                 and is_identity_maxpool(n)]
    require(not left, f"simplify_ops: node(s) remain: {left}")


def after_relu_to_qcfs(graph: gs.Graph) -> None:
    """No ReLU-like node but the readout; every QCFS has a scalar ``lam > 0``, levels, phi."""
    readout = set(output_activations(graph))
    left = [n.name for n in graph.nodes if _as_site(n) is not None and n.name not in readout]
    require(not left, f"relu_to_qcfs: ReLU-like node(s) remain: {left}")
    for node in graph.nodes:
        if node.domain == DOMAIN and node.op == QCFS_OP:
            lam = const_value(node.inputs[1])
            require(lam is not None and lam.size == 1 and float(lam.reshape(())) > 0
                    and np.isfinite(lam).all(), f"QCFS {node.name}: threshold is not > 0")
            require("levels" in node.attrs and "phi" in node.attrs,
                    f"QCFS {node.name}: attribute levels or phi missing")


def after_maxpool_reorder(graph: gs.Graph) -> None:
    """No MaxPool reads the output of a QCFS node that has no other consumer."""
    left = []
    for node in graph.nodes:
        src = node.inputs[0].inputs[0] if node.op in ("MaxPool", "GlobalMaxPool") \
            and node.inputs and node.inputs[0].inputs else None
        if src is not None and src.op == QCFS_OP and src.domain == DOMAIN \
                and len(src.outputs[0].outputs) == 1 and src.outputs[0] not in graph.outputs \
                and len(node.outputs) == 1:
            left.append(node.name)
    require(not left, f"maxpool_reorder: pool(s) still behind a QCFS: {left}")


def after_qcfs_to_if(graph: gs.Graph) -> None:
    """No QCFS remains."""
    left = [n.name for n in graph.nodes if n.domain == DOMAIN and n.op == QCFS_OP]
    require(not left, f"qcfs_to_if: QCFS node(s) remain: {left}")


def after_to_streaming(graph: gs.Graph) -> None:
    """No Scan and no IFNeuron remains."""
    left = _ops(graph, "Scan") + [n.name for n in graph.nodes
                                  if n.domain == DOMAIN and n.op == IF_OP]
    require(not left, f"to_streaming: node(s) remain: {left}")


__all__ = ["after_maxpool_reorder", "after_normalize", "after_qcfs_to_if", "after_relu_to_qcfs",
           "after_simplify_ops", "after_to_streaming"]
