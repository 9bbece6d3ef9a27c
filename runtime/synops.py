"""Multiply-accumulates of an ANN and exact synaptic operations (SynOps) of its SNN.

Every linear layer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) of a
multi-step SNN is traced back from its data input, through the ops that only move or mix
values (:mod:`onnx_rmpe.runtime.fanout`), to what feeds it:

* spiking layers only: each spike of neuron ``i`` of source ``S`` costs its fan-out
  ``F_{S,i}`` (outputs of the layer it reaches), so, exactly,
  ``SynOps(layer, t) = sum_S sum_i s_i(t) * F_{S,i}``;
* the analog input, constant over time (the first layer): multiply-accumulates;
* a non-spiking signal that changes over time (a linear layer after a linear layer):
  multiply-accumulates at every step.

A spiking neuron that reaches a neuron's input current without a weight (identity
shortcut of a residual Add) costs one accumulate per target it reaches: such joins are
reported as an extra row ``<layer> shortcut`` (the ANN pays one addition per element).
Spike counts per neuron and step, summed over the samples, are all that is needed, so
the cost of counting does not grow with the data. Biases, pooling and normalization are
not counted, for either network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_rmpe.errors import ReportError
from onnx_rmpe.runtime.fanout import (
    GLUE_OPS,
    WEIGHT_OPS,
    data_inputs,
    glue_fanout,
    is_weight_layer,
    layer_fanout,
)
from onnx_rmpe.runtime.neurons import DOMAIN, IF_OP
from onnx_rmpe.runtime.session import make_session
from onnx_rmpe.runtime.statistics import expose_outputs

logger = logging.getLogger(__name__)


@dataclass
class LinearLayer:
    """One linear layer (or identity shortcut into a spiking layer) and what feeds it.

    ``inputs``: ``spikes`` (SynOps), ``static`` (analog input constant over time: MACs)
    or ``analog`` (a non-spiking signal changing over time: MACs at every step).
    ``fanouts`` maps each spiking source (its output tensor) to the fan-out of each of
    its neurons into this layer (per-sample shape). ``macs``: the ANN's dense MACs per
    sample; ``ann_adds``: the ANN's additions per sample (shortcut rows only).
    """

    name: str
    op: str
    macs: int
    inputs: str
    fanouts: dict[str, np.ndarray] = field(default_factory=dict)
    ann_adds: int = 0

    def synops_per_step(self, counts: dict[str, np.ndarray]) -> np.ndarray:
        """SynOps at each step from spike counts ``[T, *neurons]`` per source (exact)."""
        total = None
        for source, fan in self.fanouts.items():
            c = counts[source]
            part = c.reshape(len(c), -1).astype(np.int64) @ fan.reshape(-1).astype(np.int64)
            total = part if total is None else total + part
        return total


def is_if(node: gs.Node) -> bool:
    return node.op == IF_OP and node.domain == DOMAIN


def tensor_shapes(model: onnx.ModelProto, sample: np.ndarray, *,
                  names: Iterable[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Shapes of the graph's data tensors for one sample (batch axis kept: 1 or ``T``)."""
    graph = gs.import_onnx(model)
    if names is None:
        names = [t.name for n in graph.nodes for t in n.outputs
                 if n.op in WEIGHT_OPS + GLUE_OPS or is_if(n)]
        names += [current for _, current in spike_sources(graph).values()]
    names = list(dict.fromkeys(names))
    session = make_session(expose_outputs(model, names), threads=1)
    input_name = session.get_inputs()[0].name
    values = session.run(names, {input_name: np.ascontiguousarray(sample[:1], np.float32)})
    shapes = {name: tuple(v.shape) for name, v in zip(names, values)}
    shapes[input_name] = tuple(sample[:1].shape)
    return shapes


def spike_sources(graph: gs.Graph) -> dict[str, tuple[str, str]]:
    """Spike tensors -> (layer name, input current tensor), multi-step or streaming.

    Multi-step: the outputs of ``IFNeuron`` nodes. Streaming (one step per call): the
    ``theta * Cast(GreaterOrEqual(m, theta))`` tensors with ``m = Add(<layer>.v, x)``.
    """
    found = {}
    for node in graph.toposort().nodes:
        if is_if(node):
            found[node.outputs[0].name] = (node.name, node.inputs[0].name)
        elif node.op == "Mul" and node.inputs and node.inputs[0].inputs:
            cast = node.inputs[0].inputs[0]
            ge = cast.inputs[0].inputs[0] if cast.op == "Cast" and cast.inputs[0].inputs \
                else None
            add = ge.inputs[0].inputs[0] if ge is not None and ge.op == "GreaterOrEqual" \
                and ge.inputs[0].inputs else None
            if add is not None and add.op == "Add" and add.inputs[0].name.endswith(".v"):
                found[node.outputs[0].name] = (add.inputs[0].name[:-2], add.inputs[1].name)
    return found


def temporal_tensors(graph: gs.Graph, sources: Iterable[str] | None = None) -> set[str]:
    """Tensors downstream of a spiking layer (changing over time)."""
    sources = set(spike_sources(graph) if sources is None else sources)
    temporal: set[str] = set()
    for node in graph.toposort().nodes:
        if any(t.name in temporal or t.name in sources for t in node.inputs) \
                or any(t.name in sources for t in node.outputs):
            temporal.update(t.name for t in node.outputs)
    return temporal


@dataclass
class _Sources:
    sources: set[str]
    spikes: dict[str, np.ndarray] = field(default_factory=dict)
    analog: bool = False


def _trace(tensor: gs.Tensor, fan: np.ndarray, temporal: set[str],
           shapes: dict[str, tuple[int, ...]], found: _Sources, consumer: str) -> None:
    """Carry ``fan`` (fan-out of each element of ``tensor``) back to the spiking sources."""
    if isinstance(tensor, gs.Constant):
        return
    if tensor.name not in temporal:
        found.analog = True  # a static signal mixed into a temporal one: counted as MACs
        return
    node = tensor.inputs[0]
    if tensor.name in found.sources:
        prev = found.spikes.get(tensor.name)
        found.spikes[tensor.name] = fan if prev is None else prev + fan
        return
    if is_weight_layer(node):
        found.analog = True
        return
    for i in data_inputs(node):
        inp = node.inputs[i]
        if isinstance(inp, gs.Constant):
            continue
        f_in = glue_fanout(node, i, fan, shapes) if node.op in GLUE_OPS else None
        if f_in is None:
            raise ReportError(node.name, node.op, f"the report cannot follow this op between "
                              f"spiking layers and '{consumer}' to count synaptic operations",
                              f"ops it follows: {', '.join(GLUE_OPS)} (with batch and time "
                              "on axis 0)")
        _trace(inp, np.asarray(f_in, np.int64), temporal, shapes, found, consumer)


def linear_layers(model: onnx.ModelProto,
                  shapes: dict[str, tuple[int, ...]]) -> list[LinearLayer]:
    """Every linear layer of ``model`` with its dense MACs and, if spiking, its fan-outs."""
    graph = gs.import_onnx(model)
    sources = spike_sources(graph)
    temporal = temporal_tensors(graph, sources)
    tensors = graph.tensors()
    layers = []
    for node in graph.toposort().nodes:
        if not is_weight_layer(node):
            continue
        fan, macs = layer_fanout(node, shapes)
        layer = LinearLayer(node.name, node.op, macs, "static")
        if node.inputs[0].name in temporal:
            found = _Sources(set(sources))
            _trace(node.inputs[0], fan, temporal, shapes, found, node.name)
            layer.inputs = "analog" if found.analog or not found.spikes else "spikes"
            layer.fanouts = found.spikes if layer.inputs == "spikes" else {}
        layers.append(layer)
    for name, current in sources.values():
        if current not in temporal:
            continue
        per_sample = shapes[current][1:]
        found = _Sources(set(sources))
        _trace(tensors[current], np.ones(per_sample, np.int64), temporal, shapes, found, name)
        if found.spikes:
            layers.append(LinearLayer(f"{name} shortcut", "Add", 0, "spikes", found.spikes,
                                      int(np.prod(per_sample)) * len(found.spikes)))
    logger.debug("found %d linear layer(s)", len(layers))
    return layers


def model_macs(model: onnx.ModelProto, sample: np.ndarray) -> dict[str, int]:
    """Dense MACs per sample of every linear layer of ``model`` (ANN, QCFS or SNN)."""
    graph = gs.import_onnx(model)
    nodes = [n for n in graph.nodes if is_weight_layer(n)]
    shapes = tensor_shapes(model, sample, names=[t.name for n in nodes
                                                 for t in (n.inputs[0], n.outputs[0])])
    return {n.name: layer_fanout(n, shapes)[1] for n in nodes}
