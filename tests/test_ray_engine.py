"""The Ray engine (Ray Data map_batches over onnxruntime sessions) gives the local accuracies."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from onnx_rmpe.conversion import convert
from onnx_rmpe.errors import OptionError
from onnx_rmpe.evaluation import evaluate
from tests.helpers import export_torch, train


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="needs the [ray] extra (in [test])")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_models(digits_data):
    from torch import nn
    (x, y), _ = digits_data
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(128, 10))
    ann = export_torch(train(net, x, y, epochs=6), x)
    snn = convert(ann, T=4, calib=x[:256], rmpe=False, thresholds="percentile", threads=1)
    stream = convert(ann, T=4, calib=x[:256], rmpe=False, thresholds="percentile", threads=1,
                     mode="streaming")
    return {"ann": ann, "snn": snn.snn, "streaming": stream.snn, "qcfs": snn.qcfs}


@pytest.mark.parametrize("kind", ["snn", "streaming"])
def test_ray_engine_gives_the_local_accuracies(ray_cluster, tiny_models, digits_data, kind):
    _, (xt, yt) = digits_data
    local = evaluate(tiny_models[kind], (xt, yt), batch_size=100, threads=1)
    remote = evaluate(tiny_models[kind], (xt, yt), batch_size=100, threads=1, engine="ray")
    assert local.accuracy > 0.6, local  # a trained net: the comparison means something
    assert remote.samples == local.samples == len(xt)
    assert remote.accuracy == local.accuracy
    assert remote.accuracy_per_step == local.accuracy_per_step
    assert remote.provider == "ray/CPUExecutionProvider"


def test_ray_calibration_targets_give_the_local_potentials(ray_cluster, tiny_models,
                                                          digits_data):
    """The ANN-target pass on Ray: the same targets, so the same v_init, bit for bit."""
    from onnx import numpy_helper

    from onnx_rmpe.calibration import calibrate
    (x, _), _ = digits_data
    kwargs = {"batch_size": 50, "threads": 1, "check": False}  # 5 batches, the last partial
    local = calibrate(tiny_models["snn"], tiny_models["qcfs"], x[:230], **kwargs)
    remote = calibrate(tiny_models["snn"], tiny_models["qcfs"], x[:230], engine="ray", **kwargs)
    assert remote.provider == "ray/CPUExecutionProvider"
    v_inits = {}
    for result in (local, remote):
        ifs = [n for n in result.snn.graph.node if n.op_type == "IFNeuron"]
        inits = {i.name: numpy_helper.to_array(i) for i in result.snn.graph.initializer}
        v_inits[result is remote] = [inits[n.input[2]] for n in ifs]
    assert len(v_inits[False]) == 1 and np.abs(v_inits[False][0]).max() > 0  # calibrated
    for want, got in zip(v_inits[False], v_inits[True]):
        np.testing.assert_array_equal(got, want)
    assert [vars(a) for a in local.layers] == [vars(b) for b in remote.layers]


def test_ray_engine_without_ray_names_the_extra(tiny_models, digits_data, monkeypatch):
    _, (xt, yt) = digits_data
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: _refuse_ray(
        real_import, name, *a, **k))
    with pytest.raises(OptionError, match=r"onnx-rmpe\[ray\]"):
        evaluate(tiny_models["ann"], (xt, yt), engine="ray")
    with pytest.raises(OptionError, match="engine"):
        evaluate(tiny_models["ann"], (xt, yt), engine="spark")
    from onnx_rmpe.calibration import calibrate
    with pytest.raises(OptionError, match=r"onnx-rmpe\[ray\]"):
        calibrate(tiny_models["snn"], tiny_models["qcfs"], xt[:20], engine="ray")


def test_cli_engine_ray_without_ray_is_one_error_line(tiny_models, digits_data, tmp_path,
                                                      monkeypatch):
    import numpy as np
    import onnx
    from click.testing import CliRunner

    from onnx_rmpe.cli.main import cli
    _, (xt, yt) = digits_data
    onnx.save(tiny_models["snn"], str(tmp_path / "snn.onnx"))
    np.savez(tmp_path / "test.npz", x=xt, y=yt)
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: _refuse_ray(
        real_import, name, *a, **k))
    r = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "snn.onnx"), "--data",
                                 str(tmp_path / "test.npz"), "--engine", "ray"])
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "onnx-rmpe[ray]" in errors[0], r.output
    assert "Traceback" not in r.output


def _refuse_ray(real_import, name, *args, **kwargs):
    if name == "ray" or name.startswith("ray."):
        raise ImportError(f"No module named '{name}'")
    return real_import(name, *args, **kwargs)
