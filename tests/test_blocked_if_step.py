"""The blocked IF step (depthwise 1x1 convs and Relus) gives the plain step's spikes bit for bit.

The plain step ``m = v + x; s = [m >= theta]; out = theta * s; v' = m - out`` and its
rewrite by :func:`onnx_rmpe.passes.blocked_if_step.blocked_if_step` run in onnxruntime
(ORT_ENABLE_ALL, so the NCHWc kernels run where the CPU has them) on potentials at the
threshold, one ulp either side of it, far from it, zero, negative, huge and tiny, with
thresholds from 2^-90 to 10^6 per channel: ``out`` and ``v'`` must be bit-identical
(tolerance zero; ``v'`` compared with -0.0 == 0.0).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_rmpe.modelio import infer_shapes, to_graph, to_model
from onnx_rmpe.passes.blocked_if_step import blocked_if_step

C, H, W = 16, 4, 4


def _step_model(theta: np.ndarray, v0: np.ndarray | None) -> onnx.ModelProto:
    """``x = Conv_identity(inp)`` (so the layout transformer is active), then one plain
    IF step from ``v`` (an input, or the constant start ``v0``) and a second step."""
    f32 = TensorProto.FLOAT
    eye = np.eye(C, dtype=np.float32).reshape(C, C, 1, 1)
    inits = [numpy_helper.from_array(eye, "eye"), numpy_helper.from_array(theta, "theta")]
    inputs = [helper.make_tensor_value_info("inp", f32, [2, C, H, W])]
    if v0 is None:
        inputs.append(helper.make_tensor_value_info("l.v", f32, [2, C, H, W]))
    else:
        inits.append(numpy_helper.from_array(v0, "l.v"))
    nodes = [helper.make_node("Conv", ["inp", "eye"], ["x"], name="conv")]
    v = "l.v"
    for t in (1, 2):
        nodes += [
            helper.make_node("Add", [v, "x"], [f"m{t}"], name=f"add{t}"),
            helper.make_node("GreaterOrEqual", [f"m{t}", "theta"], [f"fire{t}"], name=f"ge{t}"),
            helper.make_node("Cast", [f"fire{t}"], [f"s{t}"], to=f32, name=f"cast{t}"),
            helper.make_node("Mul", [f"s{t}", "theta"], [f"out{t}"], name=f"mul{t}"),
            helper.make_node("Sub", [f"m{t}", f"out{t}"], [f"v{t}"], name=f"sub{t}"),
        ]
        v = f"v{t}"
    outputs = [helper.make_tensor_value_info(n, f32, None) for n in ("out1", "v1", "out2", "v2")]
    graph = helper.make_graph(nodes, "if_step", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _thetas() -> np.ndarray:
    values = [2.0**-90, 1e-6, 1e-3, 0.0625, 0.1, 0.5, 0.7, 1.0, 1.5, 2.0, 3.3, 10.0, 123.4,
              1e4, 65536.0, 1e6]
    return np.array(values, np.float32).reshape(C, 1, 1)


def _potentials(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[2, C, H, W]``: per channel, the threshold, one ulp either side, and others."""
    th = np.broadcast_to(theta.reshape(C, 1), (C, 8))
    near = np.concatenate([th, np.nextafter(th, np.float32(np.inf)),
                           np.nextafter(th, np.float32(-np.inf)),
                           np.nextafter(np.nextafter(th, np.float32(-np.inf)),
                                        np.float32(-np.inf)),
                           th * np.float32(0.5), th * np.float32(2), -th,
                           np.zeros_like(th)], axis=1)[:, :16]
    far = rng.normal(0, 1, (C, 16)).astype(np.float32) * theta.reshape(C, 1) * 3
    special = np.array([3e30, -3e30, 1e-40, -1e-40, 0.0, -0.0, 1e20, -1e20], np.float32)
    far[:, :8] = special
    return np.stack([near, far]).reshape(2, C, H, W).astype(np.float32)


@pytest.mark.parametrize("theta_kind", ["per_channel", "scalar"])
def test_blocked_step_is_bit_identical(theta_kind):
    rng = np.random.default_rng(0)
    theta = _thetas() if theta_kind == "per_channel" else np.array(0.37, np.float32)
    full = np.broadcast_to(theta, (C, 1, 1)).astype(np.float32)
    plain = _step_model(theta, None)
    blocked = _rewritten(plain)
    ops = [n.op_type for n in blocked.graph.node]
    assert not {"GreaterOrEqual", "Cast", "Sub"} & set(ops), ops
    m = _potentials(full, rng)
    for v, x in ((np.zeros_like(m), m), (m, np.zeros_like(m)),
                 (rng.normal(0, 1, m.shape).astype(np.float32) * full, m)):
        feeds = {"inp": x, "l.v": v}
        want, got = _run(plain, feeds), _run(blocked, feeds)
        for name, w, g in zip(("out1", "v1", "out2", "v2"), want, got):
            np.testing.assert_array_equal(g, w, err_msg=name)  # -0.0 == 0.0 here
        assert (want[0] > 0).any() and (want[0] == 0).any()  # both outcomes were tested
        at = np.isclose(m, full, rtol=0, atol=0)
        if v is not m:
            assert (want[0][at & (v == 0)] > 0).all()  # m == theta fires


@pytest.mark.parametrize("v0_kind", ["per_channel", "per_neuron"])
def test_blocked_step_with_constant_start(v0_kind):
    """Step 1 reads the constant start potential (a state default after unrolling)."""
    rng = np.random.default_rng(1)
    theta = _thetas()
    v0 = theta * np.float32(0.5)
    if v0_kind == "per_neuron":
        v0 = (v0 + rng.normal(0, 0.1, (C, H, W)).astype(np.float32) * theta)[None]
    plain = _step_model(theta, v0.astype(np.float32))
    blocked = _rewritten(plain)
    m = _potentials(np.broadcast_to(theta, (C, 1, 1)), rng)
    want, got = _run(plain, {"inp": m}), _run(blocked, {"inp": m})
    for name, w, g in zip(("out1", "v1", "out2", "v2"), want, got):
        np.testing.assert_array_equal(g, w, err_msg=name)


def test_layers_it_cannot_write_are_kept():
    """A 2-D layer (after a Gemm) has no channels to block: the plain step stays."""
    f32 = TensorProto.FLOAT
    theta = numpy_helper.from_array(np.array(0.5, np.float32), "theta")
    nodes = [helper.make_node("Add", ["l.v", "x"], ["m"]),
             helper.make_node("GreaterOrEqual", ["m", "theta"], ["fire"]),
             helper.make_node("Cast", ["fire"], ["s"], to=f32),
             helper.make_node("Mul", ["s", "theta"], ["out"]),
             helper.make_node("Sub", ["m", "out"], ["v1"])]
    graph = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("x", f32, [2, 8]),
                                            helper.make_tensor_value_info("l.v", f32, [2, 8])],
                              [helper.make_tensor_value_info("out", f32, None),
                               helper.make_tensor_value_info("v1", f32, None)], [theta])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=10)
    g, changed = blocked_if_step(to_graph(infer_shapes(model)))
    assert not changed
    assert [n.op for n in g.nodes] == ["Add", "GreaterOrEqual", "Cast", "Mul", "Sub"]


def _rewritten(model: onnx.ModelProto) -> onnx.ModelProto:
    graph, changed = blocked_if_step(to_graph(infer_shapes(model)))
    assert changed
    out = to_model(graph, opset=17)
    onnx.checker.check_model(out, full_check=True)
    return out
