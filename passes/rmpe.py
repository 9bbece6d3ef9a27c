"""Set the per-neuron initial membrane potentials found by RMPE calibration.

Summed over ``T`` steps, an IF neuron (reset by subtraction) fires at the rate::

    theta * N(T) / T = mean_t x(t) + (v(0) - v(T)) / T

so raising ``v(0)`` by ``delta`` raises the rate by ``delta / T`` while the neuron is not
saturated. RMPE calibration measures, layer by layer, ``v_init = T * (E[a_ANN] - E[r_SNN])``
and this pass writes it into the ``v_init`` input of each ``IFNeuron``
(``v(0) = phi * theta + v_init``).

Invariant: every IF node named in ``v_inits`` reads a constant ``<node>.v_init`` of the
given (per-neuron or per-channel, broadcastable to the neuron tensor without its batch
axis) shape; nothing else changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.errors import ConversionError
from onnx_rmpe.ops import DOMAIN, IF_OP
from onnx_rmpe.passes.base import PassResult

logger = logging.getLogger(__name__)


def if_nodes(graph: gs.Graph) -> list[gs.Node]:
    """The IF neuron nodes of a graph, in topological order."""
    return [n for n in graph.toposort().nodes if n.domain == DOMAIN and n.op == IF_OP]


def set_initial_potentials(graph: gs.Graph, *, v_inits: Mapping[str, np.ndarray]) -> PassResult:
    """Write ``v_inits[node]`` as the ``v_init`` constant of each named IF node."""
    nodes = {n.name: n for n in if_nodes(graph)}
    unknown = sorted(set(v_inits) - set(nodes))
    if unknown:
        raise ConversionError(f"no IF neuron named {', '.join(unknown)} in the SNN")
    for name, value in v_inits.items():
        value = np.ascontiguousarray(value, dtype=np.float32)
        if not np.all(np.isfinite(value)):
            raise ConversionError(f"IF neuron '{name}': v_init is not finite")
        nodes[name].inputs[2] = gs.Constant(f"{name}.v_init", value)
    if v_inits:
        logger.info("set initial potentials of %d IF layer(s)", len(v_inits))
    return PassResult(graph, bool(v_inits))
