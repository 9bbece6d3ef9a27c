"""QCFS fine-tuning: the torch QCFS module, its export, `finetune` and the CLI command."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from onnx_rmpe.conversion import build_qcfs, convert
from onnx_rmpe.errors import MissingDependencyError
from onnx_rmpe.finetune import finetune, maxpool_as_avgpool
from onnx_rmpe.runtime.neurons import qcfs_reference
from onnx_rmpe.torch import QCFS, export_opsets
from tests.helpers import accuracy, export_torch, run, train


def relu_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 16, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 10))


@pytest.fixture(scope="module")
def relu_model(digits_data):
    (x, y), _ = digits_data
    torch.set_num_threads(1)
    return export_torch(train(relu_net(), x, y, epochs=10), x)


@pytest.fixture(scope="module")
def tuned(relu_model, digits_data):
    (x, y), val = digits_data
    # batch 64: 1400 images give 22 steps an epoch (the default 128 gives 11, too few here)
    return finetune(relu_model, (x, y), levels=2, epochs=3, batch_size=64, val=val,
                    progress=False)


@pytest.mark.parametrize("levels", [1, 2, 4, 8])
@pytest.mark.parametrize("lam", [0.37, 1.0, 5.5])
def test_qcfs_module_equals_reference(levels, lam):
    rng = np.random.default_rng(levels)
    grid = np.arange(-2 * levels, 3 * levels + 1, dtype=np.float32) * np.float32(lam / levels)
    z = np.concatenate([rng.normal(0, lam, 2000).astype(np.float32), grid, grid / 2])
    got = QCFS(levels, lam)(torch.from_numpy(z)).detach().numpy()
    np.testing.assert_array_equal(got, qcfs_reference(z, lam, levels))


def test_qcfs_gradients():
    q = QCFS(levels=4, lam=2.0)
    x = torch.tensor([-1.0, 0.1, 0.9, 1.7, 2.2, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert torch.isfinite(q.lam.grad) and float(q.lam.grad) != 0.0
    # clip first, straight-through floor (Bu et al.): dy/dx = 1 where 0 <= x <= lam
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 0, 0])
    # dy/dlam = [0 <= x <= lam] (q - x / lam) + [x > lam], summed
    xv = x.detach().numpy()
    qv = np.clip(np.floor(xv * 4 / 2 + 0.5) / 4, 0, 1)
    inside = np.array([0, 1, 1, 1, 0, 0])
    want = (inside * (qv - xv / 2) + (xv > 2)).sum()
    assert float(q.lam.grad) == pytest.approx(want, abs=1e-6)


def test_finetune_beats_post_training_qcfs(tuned, digits_data):
    _, (xv, yv) = digits_data
    before, after = tuned.initial_val_accuracy, tuned.val_accuracy
    # measured: 0.945 post-training (L=2) -> 0.980 after 3 epochs (SGD, cosine); ReLU 0.990
    assert 0.85 < before < 0.96
    assert after >= before + 0.02
    assert [h.epoch for h in tuned.history] == [1, 2, 3]
    assert all(np.isfinite(h.loss) and h.seconds > 0 for h in tuned.history)
    assert tuned.history[-1].loss < tuned.history[0].loss
    # the written-back ONNX model computes what was trained
    assert accuracy(run(tuned.model, xv)[0], yv) == pytest.approx(after, abs=1.5 / len(yv))
    assert tuned.thresholds.keys() == tuned.initial_thresholds.keys()
    assert tuned.thresholds != tuned.initial_thresholds
    onnx.checker.check_model(tuned.model, full_check=True)


def test_finetuned_model_converts_with_its_trained_thresholds(tuned, digits_data):
    _, (xv, yv) = digits_data
    result = convert(tuned.model, T=8, rmpe=False)
    assert result.thresholds == pytest.approx(tuned.thresholds, rel=1e-6)
    snn_acc = accuracy(run(result.snn, xv)[0], yv)
    assert snn_acc > tuned.val_accuracy - 0.1


def test_finetune_is_deterministic(relu_model, digits_data):
    (x, y), _ = digits_data
    runs = [finetune(relu_model, (x[:400], y[:400]), levels=2, epochs=1, seed=3, progress=False)
            for _ in range(2)]
    a, b = (r.model.graph.initializer for r in runs)
    assert [t.SerializeToString() for t in a] == [t.SerializeToString() for t in b]
    assert runs[0].history[0].loss == runs[1].history[0].loss


def test_maxpool_to_avgpool(relu_model, digits_data):
    (x, y), val = digits_data
    swapped = maxpool_as_avgpool(relu_model)
    assert {"MaxPool"} & {n.op_type for n in swapped.graph.node} == set()
    result = finetune(relu_model, (x[:300], y[:300]), levels=4, epochs=1, val=val,
                      maxpool_to_avgpool=True, progress=False)
    ops = {n.op_type for n in result.model.graph.node}
    assert "AveragePool" in ops and "MaxPool" not in ops
    assert result.val_accuracy > 0.5


def test_missing_torch_is_a_user_error(relu_model, digits_data, monkeypatch):
    (x, y), _ = digits_data
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match="fine-tuning.*onnx-rmpe\\[torch\\]"):
        finetune(relu_model, (x, y), progress=False)


def test_importing_the_package_does_not_import_torch():
    code = ("import sys, onnx_rmpe, onnx_rmpe.conversion, onnx_rmpe.finetune, "
            "onnx_rmpe.cli.finetune;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_torch_qcfs_export_converts(digits_data):
    (x, y), (xv, yv) = digits_data
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), QCFS(4, 3.0), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 16, 32), QCFS(4, 3.0), torch.nn.Linear(32, 10))
    train(net, x, y, epochs=8)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.from_numpy(x[:1]), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"], custom_opsets=export_opsets(),
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    exported = onnx.load_from_string(buf.getvalue())
    qnodes = [n for n in exported.graph.node if n.op_type == "QCFS"]
    assert len(qnodes) == 2 and all(n.domain == "onnx_rmpe" for n in qnodes)
    lams = sorted(float(m.lam.detach()) for m in net if isinstance(m, QCFS))
    with torch.no_grad():
        torch_acc = accuracy(net(torch.from_numpy(xv)).numpy(), yv)
    # no calibration data: the trained thresholds and L=4 are used as they are
    qcfs, thresholds = build_qcfs(exported, None)
    assert sorted(thresholds.values()) == pytest.approx(lams, rel=1e-6)
    assert accuracy(run(qcfs, xv)[0], yv) == pytest.approx(torch_acc, abs=1.5 / len(yv))
    result = convert(exported, T=64, rmpe=False)
    assert sorted(result.thresholds.values()) == pytest.approx(lams, rel=1e-6)
    snn_acc = accuracy(run(result.snn, xv)[0], yv)
    assert torch_acc > 0.9  # measured 0.950 (0.985 with the earlier gradient mask)
    assert abs(snn_acc - torch_acc) < 0.03  # the SNN at T=64 reproduces the QCFS net


def _cli():
    from onnx_rmpe.cli.main import cli
    return cli


def test_cli_finetune(tmp_path, relu_model, digits_data):
    (x, y), (xv, yv) = digits_data
    onnx.save(relu_model, tmp_path / "net.onnx")
    np.savez(tmp_path / "train.npz", x=x[:300], y=y[:300])
    np.savez(tmp_path / "val.npz", x=xv, y=yv)
    res = CliRunner().invoke(_cli(), [
        "finetune", str(tmp_path / "net.onnx"), "--data", str(tmp_path / "train.npz"),
        "--levels", "2", "--epochs", "1", "--val", str(tmp_path / "val.npz"), "--seed", "1",
        "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "epoch 1: loss" in res.output and "PASSED" in res.output
    out = tmp_path / "net.qcfs.onnx"
    assert out.is_file()
    tuned = onnx.load(out)
    assert sum(n.op_type == "QCFS" for n in tuned.graph.node) == 3
    assert accuracy(run(tuned, xv)[0], yv) > 0.8


def test_cli_finetune_user_error(tmp_path, relu_model, digits_data):
    (x, _), _ = digits_data
    onnx.save(relu_model, tmp_path / "net.onnx")
    np.savez(tmp_path / "nolabels.npz", x=x[:50])
    res = CliRunner().invoke(_cli(), [
        "finetune", str(tmp_path / "net.onnx"), "--data", str(tmp_path / "nolabels.npz"),
        "--distill", "0.5", "-o", str(tmp_path / "out.onnx"), "--no-progress"])
    assert res.exit_code == 1
    assert "error: option --distill" in res.output and "no labels" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "out.onnx").exists()
