"""The SNN against the QCFS ANN: exact first layer at T = L, error falling with T, accuracy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_rmpe.conversion import build_qcfs, convert, qcfs_to_snn
from onnx_rmpe.data import Dataset
from onnx_rmpe.modelio import get_metadata
from tests.graphs import conv_bn_relu
from tests.helpers import accuracy, export_torch, run, train


def test_first_layer_at_T_equals_L_is_exact(rng):
    """One spiking layer fed by the analog input reproduces the QCFS layer at T = L."""
    L = 4
    model = conv_bn_relu(rng)
    x = rng.normal(size=(64, 2, 6, 6)).astype(np.float32)
    qcfs, _ = build_qcfs(model, Dataset(x), levels=L)
    snn = qcfs_to_snn(qcfs, T=L)
    onnx.checker.check_model(snn, full_check=True)
    want, got = run(qcfs, x)[0], run(snn, x)[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_snn_error_falls_with_T(digits_data):
    (x, y), (xt, _) = digits_data
    from tests.nets import vgg_like
    model = export_torch(train(vgg_like(), x, y, epochs=4), x)
    qcfs, _ = build_qcfs(model, Dataset(x[:256]), levels=8)
    want = run(qcfs, xt)[0]
    errors = [float(np.abs(run(qcfs_to_snn(qcfs, T=T), xt)[0] - want).mean())
              for T in (4, 16, 64, 256)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


@pytest.fixture(scope="module")
def trained(digits_data):
    from tests.nets import ResNetLike, vgg_like
    (x, y), _ = digits_data
    return {"vgg": export_torch(train(vgg_like(), x, y, epochs=12), x),
            "resnet": export_torch(train(ResNetLike(), x, y, epochs=8), x)}


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_torch_nets_within_one_percent_at_T64(name, trained, digits_data):
    (x, _), (xt, yt) = digits_data
    result = convert(trained[name], T=64, calib=x[:256], levels=8, rmpe=False)
    qcfs_acc = accuracy(run(result.qcfs, xt)[0], yt)
    outputs = run(result.snn, xt)
    snn_acc = accuracy(outputs[0], yt)
    assert qcfs_acc > 0.9
    assert snn_acc >= qcfs_acc - 0.01, (snn_acc, qcfs_acc)
    per_step = outputs[1]
    assert per_step.shape == (64, len(xt), 10)
    np.testing.assert_allclose(per_step[-1], outputs[0], atol=1e-5)
    meta = get_metadata(result.snn)
    assert meta["onnx_rmpe.T"] == "64" and meta["onnx_rmpe.levels"] == "8"
    assert result.snn.ir_version == 10
    onnx.checker.check_model(result.snn, full_check=True)
