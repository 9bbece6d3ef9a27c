"""ONNX model-zoo architectures with random weights, from the "light" copies in the onnx wheel.

The onnx wheel ships ``backend/test/data/light/light_<name>.onnx``: published model-zoo
networks (ResNet-50, VGG-19, SqueezeNet, DenseNet-121, ...) at old opsets, with every
weight replaced by a ``ConstantOfShape`` node or left as a bare graph input. This module
gives them numerically real weights so the converter can be tried on real architectures:

* conv / fully connected weights: He-normal, ``std = gain * sqrt(2 / fan_in)`` (fan-in
  ``prod(shape[1:])``), biases zero;
* BatchNormalization: scale ``U(0.8, 1.2)``, shift ``N(0, 0.1)``, mean ``N(0, 0.1)``,
  variance ``U(0.8, 1.2)``; the scale of a BatchNormalization that ends a residual branch
  (its output feeds a ``Sum``/``Add`` of two data tensors) is multiplied by
  ``residual_gain`` so that activations do not double at every block of a deep ResNet;
* other 1-D tensors (per-channel ``Mul``/``Add`` constants): ``U(0.8, 1.2)`` when
  multiplied, ``N(0, 0.1)`` when added.

``size`` other than 224 gives a smaller input for fast tests: a last ``AveragePool`` that
covers the whole feature map at 224 becomes ``GlobalAveragePool`` (the same function at
224). Models whose other shapes are fixed to 224 (hard-coded ``Reshape`` targets, fully
connected layers fed by a flattened map) are refused at other sizes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                "shufflenet", "squeezenet", "vgg19", "zfnet512")
#: Models whose shapes do not depend on the input size once the last pool is global.
SIZE_FREE = ("densenet121", "inception_v2", "resnet50", "shufflenet", "squeezenet")


def light_model_path(name: str) -> Path:
    """The path of ``light_<name>.onnx`` inside the installed onnx wheel."""
    if name not in LIGHT_MODELS:
        raise ValueError(f"unknown light model '{name}'; choose one of {', '.join(LIGHT_MODELS)}")
    base = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
    return base / f"light_{name}.onnx"


def light_model(name: str, *, size: int = 224, seed: int = 0, gain: float = 1.0,
                residual_gain: float = 0.3, softmax: bool = True) -> onnx.ModelProto:
    """The light model ``name`` with random weights (see the module docstring).

    ``softmax=False`` drops the final Softmax: the output is the logits (for measuring how
    far an SNN is from the ANN; probabilities of random networks saturate).
    """
    if size != 224 and name not in SIZE_FREE:
        raise ValueError(f"light model '{name}' has shapes fixed to 224x224 inputs; "
                         f"other sizes work for {', '.join(SIZE_FREE)}")
    model = onnx.load(str(light_model_path(name)))
    graph = model.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name_in in enumerate(node.input):
            consumers.setdefault(name_in, []).append((node, i))
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for node in [n for n in graph.node if n.op_type == "ConstantOfShape"]:
        shape = tuple(int(d) for d in inits[node.input[0]])
        weights[node.output[0]] = _random(node.output[0], shape, consumers, graph, rng, gain,
                                          residual_gain)
    data_input = _data_input(graph, consumers)
    for vi in graph.input:
        if vi.name == data_input:
            continue
        if vi.name not in inits and vi.name not in weights:
            shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
            weights[vi.name] = _random(vi.name, shape, consumers, graph, rng, gain,
                                       residual_gain)
    keep = [n for n in graph.node
            if not (n.op_type == "ConstantOfShape" and n.output[0] in weights)]
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    kept_inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k)
                             for k, v in weights.items())
    inputs = [vi for vi in graph.input if vi.name == data_input]
    del graph.input[:]
    graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 7)
    if not softmax:
        _drop_softmax(graph)
    _free_batch(model)
    if size != 224:
        _resize(model, size)
    onnx.checker.check_model(model)
    return model


def _data_input(graph, consumers) -> str:
    """The graph input that feeds a Conv as its data (the image), not as a weight."""
    for vi in graph.input:
        if any(n.op_type == "Conv" and i == 0 for n, i in consumers.get(vi.name, [])):
            return vi.name
    raise ValueError(f"model '{graph.name}': no graph input feeds a Conv")


def _random(name: str, shape: tuple[int, ...], consumers, graph, rng, gain: float,
            residual_gain: float) -> np.ndarray:
    uses = consumers.get(name, [])
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0.0, gain * np.sqrt(2.0 / fan_in), shape)
    for node, idx in uses:
        if node.op_type == "BatchNormalization":
            if idx == 1:
                scale = rng.uniform(0.8, 1.2, shape)
                return scale * residual_gain if _ends_branch(node, consumers) else scale
            if idx == 4:
                return rng.uniform(0.8, 1.2, shape)
            return rng.normal(0.0, 0.1, shape)
        if node.op_type in ("Conv", "Gemm"):
            return np.zeros(shape)
        if node.op_type == "Unsqueeze":
            after = consumers.get(node.output[0], [])
            if any(n.op_type == "Mul" for n, _ in after):
                return rng.uniform(0.8, 1.2, shape)
            return rng.normal(0.0, 0.1, shape)
        if node.op_type == "Mul":
            return rng.uniform(0.8, 1.2, shape)
    return rng.normal(0.0, 0.1, shape)


def _ends_branch(bn: onnx.NodeProto, consumers) -> bool:
    return any(n.op_type in ("Sum", "Add") and len(n.input) > 1
               for n, _ in consumers.get(bn.output[0], []))


def _drop_softmax(graph: onnx.GraphProto) -> None:
    last = graph.node[len(graph.node) - 1]
    if last.op_type != "Softmax" or last.output[0] != graph.output[0].name:
        return
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == last.input[0]:
                node.output[i] = last.output[0]
    graph.node.remove(last)


def _free_batch(model: onnx.ModelProto) -> None:
    """A symbolic batch ``N`` on the input and outputs; Reshape targets ``[1, ...]`` -> ``-1``."""
    graph = model.graph
    for vi in list(graph.input) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "N"
    shapes = {n.input[1] for n in graph.node if n.op_type == "Reshape"}
    for i, init in enumerate(graph.initializer):
        if init.name in shapes:
            value = numpy_helper.to_array(init).copy()
            if value.ndim == 1 and value.size and value[0] == 1:
                value[0] = -1
                graph.initializer[i].CopyFrom(numpy_helper.from_array(value, init.name))
    del graph.value_info[:]


def _resize(model: onnx.ModelProto, size: int) -> None:
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = size
    if size % 32:
        raise ValueError(f"size must be a multiple of 32 (the last stage stride), got {size}")
    shapes = {n.input[1] for n in graph.node if n.op_type == "Reshape"}
    for i, init in enumerate(graph.initializer):  # channel shuffles: [N, g, c, H, W]
        value = numpy_helper.to_array(init)
        if init.name in shapes and value.ndim == 1 and value.size in (4, 5):
            value = value.copy()
            value[-2:] = value[-2:] * size // 224
            graph.initializer[i].CopyFrom(numpy_helper.from_array(value, init.name))
    pools = [n for n in graph.node if n.op_type == "AveragePool"]
    if pools and list(_attr(pools[-1], "kernel_shape")) == [7, 7]:
        last = pools[-1]
        last.op_type = "GlobalAveragePool"
        del last.attribute[:]


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


__all__ = ["LIGHT_MODELS", "SIZE_FREE", "light_model", "light_model_path"]
