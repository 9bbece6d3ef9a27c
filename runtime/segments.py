"""Cut a spiking network into per-layer segments for layer-by-layer calibration.

The segment of IF layer ``l`` computes that layer's input current ``x_l`` (``[T*N, ...]``)
from the graph input and the spike outputs of earlier IF layers: everything upstream of
those spike tensors is cut away. Running segment ``l`` on cached spikes of the calibrated
prefix costs one layer, not the whole prefix, so a calibration sweep costs about as much
as one pass of the SNN, whatever the depth (and branches and joins of residual networks
are just segments with several spike inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_rmpe.modelio import ensure_functions, to_graph
from onnx_rmpe.ops import DOMAIN, IF_OP


@dataclass
class Layer:
    """One IF layer of an SNN: node name, input current, spike output, threshold."""

    name: str
    current: str
    spikes: str
    theta: np.ndarray


@dataclass
class Segment:
    """The model computing ``layer.current`` and the spike tensors it reads."""

    layer: Layer
    model: onnx.ModelProto
    spike_inputs: list[str]
    needs_input: bool


def snn_layers(graph: gs.Graph) -> list[Layer]:
    layers = []
    for node in [n for n in graph.toposort().nodes if n.domain == DOMAIN and n.op == IF_OP]:
        theta = node.inputs[1]
        if not isinstance(theta, gs.Constant):
            raise ValueError(f"IF node {node.name}: threshold is not a constant")
        layers.append(Layer(node.name, node.inputs[0].name, node.outputs[0].name,
                            np.asarray(theta.values, np.float32)))
    return layers


def segments(snn: onnx.ModelProto) -> list[Segment]:
    """One segment per IF layer, in topological order.

    Each segment is cut out of the model's protobuf directly (a backward walk from the
    layer's input current that stops at the graph input, initializers and the spike
    outputs of IF layers), so building all segments costs about one copy of the weights,
    not one copy of the whole graph per layer.
    """
    layers = snn_layers(to_graph(snn))
    graph = snn.graph
    graph_input = graph.input[0]
    writer = {out: (i, node) for i, node in enumerate(graph.node) for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    spikes = {layer.spikes for layer in layers}
    result = []
    for layer in layers:
        nodes, cut, weights, needs_input = _walk_back(layer.current, writer, inits, spikes,
                                                      graph_input.name)
        model = _segment_model(snn, sorted(nodes), cut, weights, needs_input, layer.current,
                               layer.name)
        result.append(Segment(layer, model, cut, needs_input))
    return result


def readout_segment(snn: onnx.ModelProto) -> Segment:
    """The part of ``snn`` computing its first output from the spikes of its IF layers.

    Run on the cached calibrated spikes, it gives the calibrated SNN's output without a
    second pass of the whole network (the segment's ``layer`` names the output; its
    ``theta`` is unused).
    """
    layers = snn_layers(to_graph(snn))
    graph = snn.graph
    output = graph.output[0].name
    writer = {out: (i, node) for i, node in enumerate(graph.node) for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    nodes, cut, weights, needs_input = _walk_back(output, writer, inits,
                                                  {layer.spikes for layer in layers},
                                                  graph.input[0].name)
    model = _segment_model(snn, sorted(nodes), cut, weights, needs_input, output, "readout")
    return Segment(Layer(output, output, output, np.ones((), np.float32)), model, cut,
                   needs_input)


def _segment_model(snn: onnx.ModelProto, nodes: list[int], cut: list[str], weights: list[str],
                   needs_input: bool, output: str, name: str) -> onnx.ModelProto:
    graph = snn.graph
    inits = {t.name: t for t in graph.initializer}
    inputs = ([graph.input[0]] if needs_input else []) + [
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in cut]
    outputs = [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)]
    part = onnx.helper.make_graph([graph.node[i] for i in nodes], f"segment_{name}", inputs,
                                  outputs, [inits[n] for n in weights])
    model = onnx.helper.make_model(part, opset_imports=list(snn.opset_import),
                                   ir_version=snn.ir_version)
    return ensure_functions(model)


def _walk_back(start: str, writer, inits, spikes: set[str],
               graph_input: str) -> tuple[set[int], list[str], list[str], bool]:
    """Node indices computing ``start`` from the graph input, initializers and spikes."""
    nodes: set[int] = set()
    cut: list[str] = []
    weights: list[str] = []
    needs_input = False
    seen: set[str] = set()
    stack = [start]
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in spikes and name != start:
            cut.append(name)
        elif name == graph_input:
            needs_input = True
        elif name in inits:
            weights.append(name)
        elif name in writer:
            index, node = writer[name]
            if index not in nodes:
                nodes.add(index)
                stack.extend(node.input)
    return nodes, sorted(cut), weights, needs_input
