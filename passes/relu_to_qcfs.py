"""Replace every ReLU-like activation by a QCFS activation.

``Relu(z)``, ``Clip(z, 0, m)`` and ``Max(z, 0)`` become::

    QCFS(z) = lam * clip(floor(z * L / lam + phi) / L, 0, 1)

with one threshold ``lam > 0`` per layer (for ``Clip`` at most ``m``), ``L`` levels and
shift ``phi`` (0.5). The thresholds come from :func:`activation_sites` plus data (see
the runtime statistics module); a site without a threshold is an error, never a guess.

Invariant: no Relu, ReLU-like Clip or Max remains; every QCFS node has a constant scalar
threshold ``lam > 0`` named ``<node>.lam`` and attributes ``levels`` and ``phi``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.errors import ConversionError
from onnx_rmpe.ops import DEFAULT_PHI, DOMAIN, QCFS_OP
from onnx_rmpe.passes.base import PassResult, const_value, name_nodes, skip
from onnx_rmpe.passes.base import is_zero as _is_zero

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivationSite:
    """One ReLU-like node: its name, its pre-activation tensor and its upper clip (if any)."""

    node: str
    pre_activation: str
    cap: float | None


def activation_sites(graph: gs.Graph) -> list[ActivationSite]:
    """Every ReLU-like node of the graph, in topological order.

    A ReLU-like node whose output is a graph output is not a site: it is part of the
    readout (applied to the time-averaged outputs, see :func:`output_activations`). Sites
    are named by their node: run ``normalize`` (which names every node) first.
    """
    readout = set(output_activations(graph))
    sites = []
    for node in graph.toposort().nodes:
        site = _as_site(node)
        if site is not None and node.name not in readout:
            sites.append(site)
    return sites


def output_activations(graph: gs.Graph) -> list[str]:
    """Names of the ReLU-like nodes that produce a graph output (a ReLU on the logits)."""
    found = []
    for t in graph.outputs:
        node = t.inputs[0] if t.inputs else None
        if node is not None and not t.outputs and node.op in ("Relu", "Clip", "Max") \
                and _as_site(node) is not None:
            found.append(node.name)
    return found


def _as_site(node: gs.Node) -> ActivationSite | None:
    if node.domain not in ("", "ai.onnx", None):
        return None
    if node.op == "Relu":
        return ActivationSite(node.name, node.inputs[0].name, None)
    if node.op == "Clip":
        low = _input_value(node, 1, node.attrs.get("min", 0.0))
        high = _input_value(node, 2, node.attrs.get("max"))
        if low is not None and float(low) == 0.0:
            return ActivationSite(node.name, node.inputs[0].name,
                                  None if high is None else float(high))
    if node.op == "Where" and len(node.inputs) == 3:
        return _where_site(node)
    if node.op == "Max" and len(node.inputs) == 2:
        values = [const_value(t) for t in node.inputs]
        for data_idx, other in ((0, values[1]), (1, values[0])):
            if other is not None and other.size == 1 and float(other.reshape(())) == 0.0 \
                    and values[data_idx] is None:
                return ActivationSite(node.name, node.inputs[data_idx].name, None)
    return None


def _where_site(node: gs.Node) -> ActivationSite | None:
    """``Where(x > 0, x, 0)`` (``torch.where``) or ``Where(x <= 0, 0, x)``."""
    cond, a, b = node.inputs
    test = cond.inputs[0] if cond.inputs else None
    if test is None or len(test.inputs) != 2:
        return None
    left, right = test.inputs
    if test.op in ("Greater", "GreaterOrEqual") and left is a and _is_zero(right) \
            and _is_zero(b):
        return ActivationSite(node.name, a.name, None)
    if test.op in ("Less", "LessOrEqual") and left is b and _is_zero(right) and _is_zero(a):
        return ActivationSite(node.name, b.name, None)
    return None


def is_relu_like(node: gs.Node) -> bool:
    """Whether ``node`` is one of the ReLU forms this pass replaces."""
    return _as_site(node) is not None


def _input_value(node: gs.Node, idx: int, default):
    if len(node.inputs) > idx and node.inputs[idx].name:
        v = const_value(node.inputs[idx])
        return None if v is None else float(v.reshape(()))
    return default


def relu_to_qcfs(graph: gs.Graph, *, thresholds: Mapping[str, float], levels: int = 8,
                 phi: float = DEFAULT_PHI) -> PassResult:
    """Replace each ReLU-like node named in ``thresholds`` (node name -> lam) by QCFS."""
    if levels < 1:
        raise ConversionError(f"levels must be at least 1, got {levels}")
    name_nodes(graph)  # thresholds are keyed by node name
    sites = {s.node: s for s in activation_sites(graph)}
    for name in output_activations(graph):
        skip(f"{name} kept as part of the readout: it produces a graph output, so it is "
             "applied to the time-averaged outputs, not turned into neurons")
    missing = sorted(set(sites) - set(thresholds))
    if missing:
        raise ConversionError(f"no QCFS threshold for activation node(s): {', '.join(missing)}")
    by_name = {n.name: n for n in graph.nodes}
    for name, site in sites.items():
        lam = float(thresholds[name])
        if site.cap is not None:
            lam = min(lam, site.cap)
        if not np.isfinite(lam) or lam <= 0:
            raise ConversionError(f"activation node '{name}': threshold must be > 0, got {lam}")
        _replace(by_name[name], site, lam, levels, phi)
    if sites:
        logger.info("replaced %d ReLU-like node(s) by QCFS (L=%d)", len(sites), levels)
    return PassResult(graph, bool(sites))


def _replace(node: gs.Node, site: ActivationSite, lam: float, levels: int, phi: float) -> None:
    data = next(t for t in node.inputs if t.name == site.pre_activation)
    node.inputs.clear()
    node.op, node.domain = QCFS_OP, DOMAIN
    node.attrs = {"levels": int(levels), "phi": float(phi)}
    node.inputs.extend([data, gs.Constant(f"{node.name}.lam", np.array(lam, np.float32))])


def qcfs_nodes(graph: gs.Graph) -> list[gs.Node]:
    """The QCFS nodes of a graph, in topological order."""
    return [n for n in graph.toposort().nodes if n.domain == DOMAIN and n.op == QCFS_OP]
