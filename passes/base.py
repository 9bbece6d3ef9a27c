"""Shared plumbing for passes: the result type, a pipeline runner, small graph helpers.

A pass is a function ``graph -> (graph, changed)``; options are keyword arguments. The
runner logs one line per pass and turns an unexpected failure into a
:class:`~onnx_rmpe.errors.PassError` naming the pass and the ones that ran before it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.errors import ConversionError, PassError

logger = logging.getLogger(__name__)


class PassResult(NamedTuple):
    graph: gs.Graph
    changed: bool


Pass = Callable[[gs.Graph], PassResult]


def run_passes(graph: gs.Graph, passes: Sequence[tuple[str, Pass]]) -> gs.Graph:
    """Run ``passes`` in order; user errors pass through, anything else names the pass."""
    done: list[str] = []
    for name, fn in passes:
        try:
            graph, changed = fn(graph)
        except ConversionError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise PassError(name, done, exc) from exc
        logger.debug("pass %s: %s", name, "changed" if changed else "no change")
        done.append(name)
    return graph


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor, or None for a variable (or a missing optional input)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` read ``new`` instead."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def name_nodes(graph: gs.Graph) -> bool:
    """Give every node a unique, stable name (exporters often leave them empty)."""
    seen: set[str] = set()
    changed = False
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}_{i}" if not node.name else f"{node.name}_{i}"
            changed = True
        seen.add(node.name)
    return changed


class Names:
    """Fresh tensor and node names that do not clash with the graph's."""

    def __init__(self, graph: gs.Graph) -> None:
        self.used = set(graph.tensors().keys()) | {n.name for n in graph.nodes}

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def classify_tensors(graph: gs.Graph) -> dict[str, str]:
    """Label each tensor ``data`` (carries the batch), ``meta`` (shape arithmetic) or ``const``.

    Graph inputs are data; Shape/Size outputs are meta; a node's outputs are data if any
    input is data (Reshape's and Expand's shape inputs excepted), meta if any input is
    meta, else const.
    """
    kinds: dict[str, str] = {}
    for t in graph.inputs:
        kinds[t.name] = "data"
    for node in graph.toposort().nodes:
        ins = [kinds.get(t.name, "const") for t in node.inputs if t.name]
        if node.op in ("Shape", "Size"):
            kind = "meta"
        elif "data" in (ins[:1] if node.op in ("Reshape", "Expand", "Tile") else ins):
            kind = "data"
        elif "meta" in ins:
            kind = "meta"
        else:
            kind = "const"
        for t in node.outputs:
            kinds[t.name] = kind
    return kinds
