"""Provider selection and the compatibility of written models."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_rmpe.conversion import convert
from onnx_rmpe.forms import snn_to_streaming
from onnx_rmpe.modelio import save_model
from onnx_rmpe.runtime.session import active_provider, make_session
from tests.helpers import export_torch, train


def _tiny() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="CUDA is available here: there is no fallback to see")
def test_cuda_request_warns_and_runs_on_cpu(caplog):
    caplog.set_level(logging.WARNING, logger="onnx_rmpe")
    session = make_session(_tiny(), device="cuda", threads=1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "CUDAExecutionProvider is not available" in warnings[0].getMessage()
    assert active_provider(session) == "CPUExecutionProvider"
    y = session.run(None, {"x": np.array([[-1.0, 0.0, 2.5]], np.float32)})[0]
    np.testing.assert_array_equal(y, [[0.0, 0.0, 2.5]])


def test_cpu_request_does_not_warn(caplog):
    caplog.set_level(logging.WARNING, logger="onnx_rmpe")
    make_session(_tiny(), device="cpu")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_written_models_are_ir10_opset_17_to_21(digits_data, tmp_path):
    import torch.nn as nn
    (x, y), _ = digits_data
    net = train(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)),
                x[:300], y[:300], epochs=1)
    result = convert(export_torch(net, x), T=4, calib=x[:100], output=tmp_path / "snn.onnx",
                     save_qcfs=tmp_path / "qcfs.onnx")
    stream = save_model(snn_to_streaming(result.snn), tmp_path / "stream.onnx")
    for path in (result.output_path, result.qcfs_path, stream):
        model = onnx.load(str(path))
        assert model.ir_version == 10, path
        opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
        assert 17 <= opset <= 21, (path, opset)
        onnx.checker.check_model(model, full_check=True)
        make_session(model, threads=1)  # loads in onnxruntime


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="CUDA is available here: nothing falls back")
def test_providers_argument_reports_the_provider_that_ran(caplog, rng):
    from onnx_rmpe.evaluation import evaluate
    from tests.graphs import conv_bn_relu
    model = conv_bn_relu(rng)
    x = rng.normal(size=(32, 2, 6, 6)).astype(np.float32)
    caplog.set_level(logging.WARNING, logger="onnx_rmpe")
    result = convert(model, T=2, calib=x,
                     providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert result.calibration.provider == "CPUExecutionProvider"
    assert any("CUDAExecutionProvider is not available" in r.message for r in caplog.records)
    ev = evaluate(result.snn, (x, np.zeros(len(x), np.int64)), providers=["CPUExecutionProvider"])
    assert ev.provider == "CPUExecutionProvider" and ev.T == 2
