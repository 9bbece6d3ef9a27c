"""The torch interpreter against onnxruntime, op by op, and the weight round trip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnx_rmpe.errors import ConversionError, UnsupportedOpError
from onnx_rmpe.modelio import ensure_functions
from onnx_rmpe.runtime.neurons import DOMAIN
from onnx_rmpe.torch import OnnxModule
from onnx_rmpe.torch.interpreter import trained_initializers
from tests.helpers import export_torch, run

R = np.random.default_rng(0)


def arr(*shape, dtype=np.float32):
    return R.standard_normal(shape).astype(dtype)


def i64(*values):
    return np.array(values, np.int64)


def model(nodes, x_shape, inits=None, opset=18):
    """A graph ``x -> y`` of ``nodes``: (op, inputs, attrs) tuples or NodeProtos."""
    protos = []
    for k, spec in enumerate(nodes):
        if isinstance(spec, onnx.NodeProto):
            protos.append(spec)
            continue
        op, ins, attrs = spec
        out = "y" if k == len(nodes) - 1 else f"t{k}"
        protos.append(helper.make_node(op, ins, [out], name=f"n{k}", **attrs))
    graph = helper.make_graph(
        protos, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return ensure_functions(m)


CONV_W = {"W": arr(4, 3, 3, 3), "B": arr(4)}
CASES = {
    "conv": ([("Conv", ["x", "W", "B"], {"pads": [1, 1, 1, 1]})], (2, 3, 8, 8), CONV_W),
    "conv_stride_dil_asym": ([("Conv", ["x", "W", "B"], {"strides": [2, 1], "dilations": [2, 1],
                                                        "pads": [0, 1, 2, 0]})], (2, 3, 9, 8),
                             CONV_W),
    "conv_groups_nobias": ([("Conv", ["x", "W"], {"group": 3, "pads": [1, 1, 1, 1]})],
                           (2, 6, 5, 5), {"W": arr(6, 2, 3, 3)}),
    "conv1d_same": ([("Conv", ["x", "W"], {"auto_pad": "SAME_UPPER", "strides": [2]})],
                    (2, 3, 7), {"W": arr(4, 3, 4)}),
    "gemm_transB": ([("Gemm", ["x", "W", "B"], {"transB": 1, "alpha": 0.5, "beta": 2.0})],
                    (3, 5), {"W": arr(4, 5), "B": arr(4)}),
    "gemm_transA": ([("Gemm", ["x", "W"], {"transA": 1})], (5, 3), {"W": arr(5, 4)}),
    "matmul_bias_add": ([("MatMul", ["x", "W"], {}), ("Add", ["t0", "B"], {})], (2, 3, 5),
                        {"W": arr(5, 4), "B": arr(4)}),
    "sub_mul_div": ([("Sub", ["x", "A"], {}), ("Mul", ["t0", "A"], {}), ("Div", ["t1", "D"], {})],
                    (2, 3, 4), {"A": arr(3, 1), "D": np.array(2.5, np.float32)}),
    "relu": ([("Relu", ["x"], {})], (2, 7), {}),
    "clip": ([("Clip", ["x", "lo", "hi"], {})], (2, 7),
             {"lo": np.array(0, np.float32), "hi": np.array(0.7, np.float32)}),
    "max0": ([("Max", ["x", "z"], {})], (2, 7), {"z": np.array(0, np.float32)}),
    "batchnorm": ([("BatchNormalization", ["x", "s", "b", "m", "v"], {"epsilon": 1e-3})],
                  (2, 3, 4, 4), {"s": arr(3), "b": arr(3), "m": arr(3),
                                 "v": np.abs(arr(3)) + 0.5}),
    "avgpool": ([("AveragePool", ["x"], {"kernel_shape": [2, 2], "strides": [2, 2]})],
                (2, 3, 8, 8), {}),
    "avgpool_pad_include": ([("AveragePool", ["x"], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                     "pads": [1, 1, 1, 1],
                                                     "count_include_pad": 1})], (2, 3, 7, 7), {}),
    "avgpool_pad_exclude_ceil": ([("AveragePool", ["x"], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                          "pads": [1, 1, 1, 1], "ceil_mode": 1})],
                                 (2, 3, 8, 8), {}),
    "avgpool_include_ceil_asym": ([("AveragePool", ["x"], {
        "kernel_shape": [3, 2], "strides": [2, 2], "pads": [0, 1, 1, 0], "ceil_mode": 1,
        "count_include_pad": 1})], (2, 3, 8, 7), {}),
    "global_avgpool": ([("GlobalAveragePool", ["x"], {})], (2, 3, 5, 5), {}),
    "maxpool": ([("MaxPool", ["x"], {"kernel_shape": [2, 2], "strides": [2, 2]})], (2, 3, 8, 8),
                {}),
    "maxpool_pad_ceil": ([("MaxPool", ["x"], {"kernel_shape": [3, 3], "strides": [2, 2],
                                              "pads": [1, 1, 1, 1], "ceil_mode": 1})],
                         (2, 3, 8, 8), {}),
    "maxpool_asym": ([("MaxPool", ["x"], {"kernel_shape": [3, 3], "strides": [1, 2],
                                          "pads": [0, 2, 1, 0]})], (2, 3, 6, 7), {}),
    "global_maxpool": ([("GlobalMaxPool", ["x"], {})], (2, 3, 5, 5), {}),
    "concat": ([("Concat", ["x", "C"], {"axis": 1})], (2, 3, 4), {"C": arr(2, 2, 4)}),
    "flatten": ([("Flatten", ["x"], {"axis": 2})], (2, 3, 4, 5), {}),
    "reshape_0_-1": ([("Reshape", ["x", "s"], {})], (2, 3, 4, 5), {"s": i64(0, -1, 5)}),
    "transpose": ([("Transpose", ["x"], {"perm": [0, 2, 3, 1]})], (2, 3, 4, 5), {}),
    "pad_constant": ([("Pad", ["x", "p", "v"], {})], (2, 3, 4, 5),
                     {"p": i64(0, 0, 1, 2, 0, 0, 2, 0), "v": np.array(0.5, np.float32)}),
    "pad_axes": ([("Pad", ["x", "p", "", "a"], {})], (2, 3, 4, 5),
                 {"p": i64(1, 0, 0, 3), "a": i64(-1, 2)}),
    "squeeze_unsqueeze": ([("Unsqueeze", ["x", "a"], {}), ("Squeeze", ["t0", "a"], {})],
                          (2, 3, 4), {"a": i64(1, -1)}),
    "reduce_mean": ([("ReduceMean", ["x", "a"], {"keepdims": 0})], (2, 3, 4, 5), {"a": i64(2, 3)}),
    "reduce_sum": ([("ReduceSum", ["x", "a"], {"keepdims": 1})], (2, 3, 4, 5), {"a": i64(-1)}),
    "slice_steps": ([("Slice", ["x", "s", "e", "a", "st"], {})], (2, 6, 7),
                    {"s": i64(1, -1), "e": i64(100, 0), "a": i64(1, 2), "st": i64(2, -2)}),
    "softmax": ([("Softmax", ["x"], {"axis": 1})], (2, 5, 3), {}),
    "logsoftmax": ([("LogSoftmax", ["x"], {})], (2, 5), {}),
    "identity_dropout": ([("Identity", ["x"], {}), ("Dropout", ["t0"], {})], (2, 5), {}),
    "shape_arith": ([("Shape", ["x"], {}), ("Gather", ["t0", "zero"], {}),
                     ("Unsqueeze", ["t1", "ax"], {}), ("Concat", ["t2", "m1"], {"axis": 0}),
                     ("Cast", ["t3"], {"to": TensorProto.INT64}),
                     helper.make_node("Constant", [], ["c"], value_float=2.0),
                     ("Reshape", ["x", "t4"], {}), ("Mul", ["t6", "c"], {})],
                    (2, 3, 4), {"zero": i64(0).reshape(()), "ax": i64(0), "m1": i64(-1)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case):
    nodes, shape, inits = CASES[case]
    m = model(nodes, shape, inits)
    x = R.standard_normal(shape).astype(np.float32)
    want = run(m, x)[0]
    got = OnnxModule(m)(torch.from_numpy(x)).detach().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("levels", [1, 2, 8])
def test_qcfs_node_matches_onnxruntime(levels):
    node = helper.make_node("QCFS", ["t0", "lam"], ["y"], name="act", domain=DOMAIN,
                            levels=levels, phi=0.5)
    m = model([("Conv", ["x", "W", "B"], {"pads": [1, 1, 1, 1]}), node], (2, 3, 6, 6),
              {**CONV_W, "lam": np.array(1.7, np.float32)})
    x = R.standard_normal((2, 3, 6, 6)).astype(np.float32)
    net = OnnxModule(m)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), run(m, x)[0], atol=1e-4)
    assert net.thresholds() == {"act": pytest.approx(1.7)}
    assert len(net.lam_parameters()) == 1


def test_trained_tensors_are_weights_biases_and_thresholds():
    nodes, shape, inits = CASES["matmul_bias_add"]
    assert trained_initializers(model(nodes, shape, inits).graph) == {"W", "B"}
    nodes, shape, inits = CASES["sub_mul_div"]
    assert trained_initializers(model(nodes, shape, inits).graph) == set()
    nodes, shape, inits = CASES["batchnorm"]
    assert trained_initializers(model(nodes, shape, inits).graph) == {"s", "b"}


def test_unsupported_op_is_named():
    m = model([("Sigmoid", ["x"], {})], (2, 3))
    with pytest.raises(UnsupportedOpError, match="n0.*Sigmoid") as info:
        OnnxModule(m)
    assert isinstance(info.value, ConversionError)


def test_exported_network_and_weight_round_trip():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 4, 3, groups=2, padding=1), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    x = R.random((5, 1, 8, 8)).astype(np.float32)
    m = export_torch(net, x)
    mod = OnnxModule(m)
    np.testing.assert_allclose(mod(torch.from_numpy(x)).detach().numpy(), run(m, x)[0], atol=1e-4)
    # change every trained tensor, write back: onnxruntime sees the new weights
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.05 * torch.randn_like(p))
    back = mod.to_onnx()
    onnx.checker.check_model(back, full_check=True)
    assert [i.name for i in back.graph.initializer] == [i.name for i in m.graph.initializer]
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in m.graph.node]
    got = run(back, x)[0]
    np.testing.assert_allclose(mod(torch.from_numpy(x)).detach().numpy(), got, atol=1e-4)
    assert np.abs(got - run(m, x)[0]).max() > 1e-3
    # gradients reach every trained tensor
    mod(torch.from_numpy(x)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mod.parameters())
