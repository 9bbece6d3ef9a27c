"""The streaming (one step per call) SNN against the multi-step SNN it comes from."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_rmpe.conversion import convert
from onnx_rmpe.forms import snn_to_streaming
from onnx_rmpe.modelio import to_graph
from onnx_rmpe.passes.streaming import to_streaming
from onnx_rmpe.runtime.neurons import IF_OP
from onnx_rmpe.runtime.streaming import StreamingRunner, initial_states
from tests.helpers import export_torch, run, train
from tests.kit import neurons, random_v_init, with_outputs

T = 6


def _cnn():
    import torch.nn as nn
    # the second MaxPool follows a spiking layer: it gets the cumulative form
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 1),
                         nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(12 * 3 * 3, 10))


def _resnet():
    import torch
    import torch.nn as nn

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            h = torch.relu(self.c2(torch.relu(self.c1(h))) + h)
            return torch.log_softmax(self.fc(h.mean((2, 3))), -1)

    return Res()


@pytest.fixture(scope="module", params=["cnn", "resnet"])
def snn(request, digits_data):
    (x, y), _ = digits_data
    net = train({"cnn": _cnn, "resnet": _resnet}[request.param](), x[:600], y[:600], epochs=2)
    return convert(export_torch(net, x), T=T, calib=x[:200]).snn








def _compare(snn: onnx.ModelProto, x: np.ndarray) -> None:
    out = snn.graph.output[0].name
    spikes = [n.output[0] for n in neurons(snn)]
    stream = snn_to_streaming(snn)
    onnx.checker.check_model(stream, full_check=True)
    assert not any(n.op_type in ("Scan", IF_OP) for n in stream.graph.node)
    multi = run(with_outputs(snn, spikes), x)
    named = dict(zip([o.name for o in snn.graph.output] + spikes, multi))
    runner = StreamingRunner(with_outputs(stream, spikes), threads=1)
    got = runner.run(x, T, output=out)
    want = named[f"{out}_per_step"]
    assert got.shape == want.shape == (T, len(x), 10)
    np.testing.assert_array_equal(got, want)  # bit for bit
    np.testing.assert_array_equal(got[-1], named[out])
    # spikes of every layer, step by step
    runner.reset(len(x))
    per_layer = {n: [] for n in spikes}
    for _ in range(T):
        runner.step(x)
        for n in spikes:
            per_layer[n].append(runner.outputs[n])
    fired = 0
    for n in spikes:
        multi_steps = named[n].reshape(T, len(x), *named[n].shape[1:])
        np.testing.assert_array_equal(np.stack(per_layer[n]), multi_steps)
        fired += int((multi_steps > 0).sum())
    assert fired > 0


def test_streaming_matches_multi_step(snn, digits_data):
    _, (x_test, _) = digits_data
    _compare(snn, x_test[:32])


def test_streaming_carries_calibrated_v_init(snn, digits_data, rng):
    _, (x_test, _) = digits_data
    calibrated = random_v_init(snn, x_test, rng)
    assert not np.array_equal(run(calibrated, x_test[:32])[0], run(snn, x_test[:32])[0])
    _compare(calibrated, x_test[:32])
    # the default state is v(0) = phi * theta + v_init, per neuron
    stream = snn_to_streaming(calibrated)
    inits = {i.name: numpy_helper.to_array(i) for i in calibrated.graph.initializer}
    start = initial_states(stream, 3)
    for node in neurons(calibrated):
        v0 = inits[node.input[1]] * np.float32(0.5) + inits[node.input[2]]
        assert start[f"{node.name}.v"].shape == (3, *v0.shape)
        np.testing.assert_array_equal(start[f"{node.name}.v"], np.broadcast_to(v0, (3, *v0.shape)))


def test_first_step_needs_only_the_input(snn, digits_data):
    _, (x_test, _) = digits_data
    stream = snn_to_streaming(snn)
    first = run(stream, x_test[:4])  # every state at its default
    want = run(snn, x_test[:4])[1][0]
    np.testing.assert_array_equal(first[0], want)
    names = [o.name for o in stream.graph.output]
    assert names[:2] == [snn.graph.output[0].name, f"{snn.graph.output[0].name}_step"]
    assert all(n.endswith("_next") for n in names[2:])


def test_to_streaming_leaves_ann_alone():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "ann",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]))
    graph = to_graph(model)
    result = to_streaming(graph)
    assert not result.changed
    assert [n.op for n in result.graph.nodes] == ["Relu"]
