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

from onnx_rmpe.modelio import to_graph, to_model
from onnx_rmpe.passes.rmpe import if_nodes


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
    for node in if_nodes(graph):
        theta = node.inputs[1]
        if not isinstance(theta, gs.Constant):
            raise ValueError(f"IF node {node.name}: threshold is not a constant")
        layers.append(Layer(node.name, node.inputs[0].name, node.outputs[0].name,
                            np.asarray(theta.values, np.float32)))
    return layers


def segments(snn: onnx.ModelProto) -> list[Segment]:
    """One segment per IF layer, in topological order."""
    base = to_graph(snn)
    layers = snn_layers(base)
    graph_input = base.inputs[0].name
    result = []
    for i, layer in enumerate(layers):
        graph = base.copy()
        tensors = graph.tensors()
        cut = [tensors[earlier.spikes] for earlier in layers[:i]]
        for t in cut:
            t.inputs.clear()
            t.dtype, t.shape = np.float32, None
        out = tensors[layer.current]
        out.dtype = np.float32
        graph.inputs = [tensors[graph_input]] + cut
        graph.outputs = [out]
        graph.cleanup(remove_unused_graph_inputs=True)
        names = [t.name for t in graph.inputs]
        model = to_model(graph)
        result.append(Segment(layer, model, [n for n in names if n != graph_input],
                              graph_input in names))
    return result
