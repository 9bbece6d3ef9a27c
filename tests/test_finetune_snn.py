"""SNN-level fine-tuning: the torch IF neuron, the SNN in the interpreter, `finetune_snn`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from onnx_rmpe.conversion import convert
from onnx_rmpe.errors import OptionError
from onnx_rmpe.finetune_snn import MONITOR, finetune_snn
from onnx_rmpe.runtime.neurons import if_reference
from onnx_rmpe.torch.interpreter import OnnxModule
from onnx_rmpe.torch.surrogate import SpikeFunction, cumsum_op, if_neuron
from onnx_rmpe.torch.training import loss_fn
from tests.helpers import accuracy, run


@pytest.fixture(scope="module")
def relu_model(digits_relu_cnn):
    return digits_relu_cnn


@pytest.fixture(scope="module")
def snn_T1(relu_model, digits_data):
    (x, _), _ = digits_data
    return convert(relu_model, T=1, calib=x[:256], calib_samples=256, threads=1).snn


@pytest.mark.parametrize("T", [1, 2, 4])
def test_torch_if_neuron_equals_reference(T):
    rng = np.random.default_rng(T)
    x = rng.normal(0.3, 1.0, (T, 5, 3, 4)).astype(np.float32)
    theta, v_init = np.float32(0.8), rng.normal(0, 0.2, (3, 4)).astype(np.float32)
    spikes, _ = if_reference(x, theta, v_init)
    got = if_neuron(torch.from_numpy(x.reshape(T * 5, 3, 4)), torch.tensor(theta),
                    torch.from_numpy(v_init), T=T).numpy()
    np.testing.assert_array_equal(got, (spikes * theta).reshape(T * 5, 3, 4))


def test_surrogate_gradient_is_a_triangle_around_threshold():
    m = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.5], requires_grad=True)
    theta = torch.tensor(1.0, requires_grad=True)
    s = SpikeFunction.apply(m, theta)
    assert s.tolist() == [0, 0, 1, 1, 1]
    s.sum().backward()
    np.testing.assert_allclose(m.grad.numpy(), [0, 0.5, 1, 0.5, 0], atol=1e-7)
    assert float(theta.grad) == pytest.approx(-2.0)


def test_cumsum_matches_onnx_semantics():
    x = torch.arange(1.0, 5.0)
    axis = torch.tensor(0)
    assert cumsum_op([x, axis], {}).tolist() == [1, 3, 6, 10]
    assert cumsum_op([x, axis], {"exclusive": 1}).tolist() == [0, 1, 3, 6]
    assert cumsum_op([x, axis], {"reverse": 1}).tolist() == [10, 9, 7, 4]
    assert cumsum_op([x, axis], {"reverse": 1, "exclusive": 1}).tolist() == [9, 7, 4, 0]


@pytest.mark.parametrize("T", [1, 3])
def test_converted_snn_runs_in_torch_as_in_onnxruntime(relu_model, digits_data, T):
    (x, _), (xv, _) = digits_data
    snn = convert(relu_model, T=T, calib=x[:128], calib_samples=128, threads=1).snn
    want = run(snn, xv)
    with torch.no_grad():
        got = OnnxModule(snn)(torch.from_numpy(xv))
    assert len(got) == len(want) == 2  # logits and logits_per_step
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-4 * np.abs(w).max())
    assert len(OnnxModule(snn).neuron_parameters()) == 2 * 2  # theta, v_init of 2 layers


def _ort_loss(model: onnx.ModelProto, teacher: onnx.ModelProto, x: np.ndarray) -> float:
    s, t = (torch.from_numpy(run(m, x)[0]) for m in (model, teacher))
    return float(loss_fn(s, None, t, distill=1.0, temperature=1.0))


def test_snn_finetune_lowers_distillation_loss_in_onnxruntime(relu_model, snn_T1, digits_data):
    (x, _), (xv, yv) = digits_data
    result = finetune_snn(snn_T1, x, teacher=relu_model, steps=60, batch_size=64)
    assert result.T == 1 and result.distill == 1.0 and not result.kept_input
    before = _ort_loss(snn_T1, relu_model, x[:MONITOR])
    after = _ort_loss(result.model, relu_model, x[:MONITOR])
    # the loss the job reports is the loss of the written ONNX model
    assert before == pytest.approx(result.loss_before, rel=1e-3)
    assert after == pytest.approx(result.loss_after, rel=1e-3)
    # measured on digits, T=1: 0.236 -> 0.090 (held-out accuracy 0.914 -> 0.927)
    assert after < 0.75 * before
    assert accuracy(run(result.model, xv)[0], yv) >= accuracy(run(snn_T1, xv)[0], yv) - 0.02
    # the same graph: only initializer values differ
    assert [(n.op_type, list(n.input)) for n in result.model.graph.node] == \
        [(n.op_type, list(n.input)) for n in snn_T1.graph.node]
    onnx.checker.check_model(result.model, full_check=True)


def test_snn_finetune_with_labels_and_weights(relu_model, snn_T1, digits_data):
    (x, y), _ = digits_data
    result = finetune_snn(snn_T1, (x, y), steps=30, batch_size=64, train_weights=True)
    assert result.distill == 0.0
    assert result.loss_after <= result.loss_before
    changed = {i.name for i, j in zip(result.model.graph.initializer, snn_T1.graph.initializer)
               if i.SerializeToString() != j.SerializeToString()}
    if not result.kept_input:
        assert any(name.endswith(".v_init") for name in changed)
        assert any(not name.endswith((".v_init", ".lam")) for name in changed)  # weights


def test_snn_finetune_user_errors(relu_model, snn_T1, digits_data):
    (x, y), _ = digits_data
    with pytest.raises(OptionError, match="no onnx_rmpe::IFNeuron"):
        finetune_snn(relu_model, (x, y), steps=1)
    with pytest.raises(OptionError, match="option teacher"):
        finetune_snn(snn_T1, (x, y), distill=1.0, steps=1)
    with pytest.raises(OptionError, match="no labels"):
        finetune_snn(snn_T1, x, steps=1)
    with pytest.raises(OptionError, match="option steps"):
        finetune_snn(snn_T1, (x, y), steps=-1)


def test_cli_finetune_snn(tmp_path, relu_model, snn_T1, digits_data):
    from click.testing import CliRunner

    from onnx_rmpe.cli.main import cli
    (x, _), (xv, _) = digits_data
    onnx.save(relu_model, tmp_path / "ann.onnx")
    onnx.save(snn_T1, tmp_path / "snn.onnx")
    np.savez(tmp_path / "unlabelled.npz", x=x[:600])
    args = ["finetune-snn", str(tmp_path / "snn.onnx"), "--data", str(tmp_path / "unlabelled.npz"),
            "--steps", "20", "-o", str(tmp_path / "out.onnx")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "--teacher" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out.onnx").exists()
    res = CliRunner().invoke(cli, [*args, "--teacher", str(tmp_path / "ann.onnx")])
    assert res.exit_code == 0, res.output
    assert "T=1: loss on the first training samples" in res.output
    out = run(onnx.load(tmp_path / "out.onnx"), xv)[0]
    assert out.shape == (len(xv), 10) and np.isfinite(out).all()
