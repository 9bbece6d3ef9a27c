"""Tiny ONNX graphs built in code for pass tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def vi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_bn_relu(rng, *, bias: bool = True, groups: int = 1, act: str = "Relu",
                 bn: bool = True, channels: int = 4) -> onnx.ModelProto:
    """x[N,2*g,6,6] -> Conv(3x3, groups) [-> BN] -> act -> Flatten -> Gemm -> y[N,3]."""
    cin = 2 * groups
    w = rng.normal(0, 0.5, (channels * groups, cin // groups, 3, 3)).astype(np.float32)
    inits = [("w", w)]
    conv_in = ["x", "w"]
    if bias:
        inits.append(("b", rng.normal(0, 0.1, channels * groups).astype(np.float32)))
        conv_in.append("b")
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1], group=groups)]
    last = "c"
    if bn:
        c = channels * groups
        inits += [("g", rng.uniform(0.5, 1.5, c).astype(np.float32)),
                  ("be", rng.normal(0, 0.1, c).astype(np.float32)),
                  ("m", rng.normal(0, 0.1, c).astype(np.float32)),
                  ("v", rng.uniform(0.5, 1.5, c).astype(np.float32))]
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"]))
        last = "n"
    nodes += _activation(act, last, "a", inits)
    fc = rng.normal(0, 0.2, (3, channels * groups * 36)).astype(np.float32)
    inits.append(("fc", fc))
    nodes += [helper.make_node("Flatten", ["a"], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    return make_model(nodes, [vi("x", ["N", cin, 6, 6])], [vi("y", ["N", 3])], inits)


def _activation(act: str, src: str, dst: str, inits: list) -> list:
    if act == "Relu":
        return [helper.make_node("Relu", [src], [dst])]
    if act == "Clip":
        inits += [("lo", np.array(0, np.float32)), ("hi", np.array(6, np.float32))]
        return [helper.make_node("Clip", [src, "lo", "hi"], [dst])]
    if act == "Max":
        inits.append(("zero", np.array(0, np.float32)))
        return [helper.make_node("Max", [src, "zero"], [dst])]
    if act == "Where":  # torch.where(x > 0, x, 0)
        inits.append(("zero", np.array(0, np.float32)))
        return [helper.make_node("Greater", [src, "zero"], [f"{src}_pos"]),
                helper.make_node("Where", [f"{src}_pos", src, "zero"], [dst])]
    if act == "LeakyRelu":
        return [helper.make_node("LeakyRelu", [src], [dst], alpha=0.1)]
    if act == "Sigmoid":
        return [helper.make_node("Sigmoid", [src], [dst])]
    raise ValueError(act)
