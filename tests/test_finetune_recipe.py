"""The fine-tuning recipe: option checks, schedules, the loss, augmentation, distillation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.finetune import finetune
from onnx_rmpe.recipe import Recipe
from onnx_rmpe.torch.training import loss_fn, make_optimizer, make_schedule, shift_images
from tests.helpers import accuracy, run


@pytest.fixture(scope="module")
def relu_model(digits_relu_cnn):
    return digits_relu_cnn


BAD_OPTIONS = [
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"schedule": "step"}, "schedule"),
    ({"lr": 0.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"batch_size": 0}, "batch_size"),
    ({"distill": 1.5}, "distill"),
    ({"distill": -0.1}, "distill"),
    ({"temperature": 0.0}, "temperature"),
    ({"epochs": -1}, "epochs"),
    ({"levels": 0}, "levels"),
    ({"percentile": 0.0}, "percentile"),
]


@pytest.mark.parametrize(("options", "name"), BAD_OPTIONS)
def test_bad_options_are_user_errors_naming_the_option(relu_model, digits_data, options, name):
    (x, y), _ = digits_data
    with pytest.raises(OptionError, match=f"^option {name}:") as err:
        finetune(relu_model, (x[:50], y[:50]), progress=False, **{"epochs": 1, **options})
    assert isinstance(err.value, ConversionError) and err.value.option == name


def test_partial_distillation_needs_labels(relu_model, digits_data):
    (x, _), _ = digits_data
    with pytest.raises(OptionError, match="distill.*no labels"):
        finetune(relu_model, x[:50], distill=0.5, epochs=1, progress=False)


def test_augment_needs_images(digits_data):
    from onnx_rmpe.recipe import check_augmentable
    check_augmentable(Recipe(augment=True), np.zeros((2, 1, 8, 8), np.float32))  # fits
    with pytest.raises(OptionError, match="augment"):
        check_augmentable(Recipe(augment=True), np.zeros((2, 64), np.float32))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_schedules(optimizer):
    lr = 0.05
    for schedule, start_max, end_max in (("cosine", lr, 1e-9), ("onecycle", lr / 10, lr / 100),
                                         ("constant", lr, lr)):
        recipe = Recipe(optimizer=optimizer, lr=lr, schedule=schedule)
        opt = make_optimizer(recipe, [torch.nn.Parameter(torch.zeros(1))])
        sched = make_schedule(recipe, opt, 100)
        rates = [opt.param_groups[0]["lr"]]
        for _ in range(100):
            opt.step()
            if sched is not None:
                sched.step()
            rates.append(opt.param_groups[0]["lr"])
        assert rates[0] <= start_max * (1 + 1e-6), schedule
        assert max(rates) == pytest.approx(lr, rel=1e-6), schedule
        assert rates[-1] <= end_max * (1 + 1e-6) + 1e-12, schedule
    assert Recipe(optimizer=optimizer).learning_rate == {"sgd": 1e-2, "adam": 1e-3}[optimizer]


def test_loss_is_cross_entropy_distillation_or_the_mix(rng):
    s = torch.from_numpy(rng.normal(size=(16, 10)).astype(np.float32))
    t = torch.from_numpy(rng.normal(size=(16, 10)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 16))
    ce = torch.nn.functional.cross_entropy(s, y)
    assert float(loss_fn(s, y, None, distill=0.0, temperature=1.0)) == pytest.approx(float(ce))
    assert float(loss_fn(s, None, s, distill=1.0, temperature=4.0)) == pytest.approx(0, abs=1e-6)
    kd = float(loss_fn(s, None, t, distill=1.0, temperature=1.0))
    p = torch.softmax(t, -1)
    want = float((p * (torch.log(p) - torch.log_softmax(s, -1))).sum(-1).mean())
    assert kd == pytest.approx(want, rel=1e-5) and kd > 0
    mix = float(loss_fn(s, y, t, distill=0.25, temperature=1.0))
    assert mix == pytest.approx(0.75 * float(ce) + 0.25 * kd, rel=1e-5)


def test_shift_images_translates_each_image(rng):
    x = torch.from_numpy(rng.random((32, 2, 9, 7)).astype(np.float32)) + 1  # no zeros inside
    shifted = shift_images(x, torch.Generator().manual_seed(0), max_shift=2)
    assert shifted.shape == x.shape
    seen = set()
    for a, b in zip(x.numpy(), shifted.numpy()):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(b, _shift(a, dy, dx))]
        assert len(found) == 1
        seen.add(found[0])
    assert len(seen) > 5  # the shifts differ between images


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_distillation_without_labels_beats_post_training_qcfs(relu_model, digits_data):
    (x, _), (xv, yv) = digits_data
    relu_acc = accuracy(run(relu_model, xv)[0], yv)
    result = finetune(relu_model, x, levels=1, epochs=3, val=(xv, yv), progress=False)
    assert result.distill == 1.0
    before, after = result.initial_val_accuracy, result.val_accuracy
    # measured: ReLU 0.985; post-training QCFS (L=1) 0.149 -> 0.859 distilled without labels
    assert relu_acc > 0.95
    assert before < 0.5
    assert after >= before + 0.3
    assert after > 0.7
    assert accuracy(run(result.model, xv)[0], yv) == pytest.approx(after, abs=1.5 / len(yv))


def test_cli_finetune_without_labels_says_it_distils(tmp_path, relu_model, digits_data):
    from onnx_rmpe.cli.main import cli
    (x, _), (xv, yv) = digits_data
    onnx.save(relu_model, tmp_path / "net.onnx")
    np.savez(tmp_path / "unlabelled.npz", x=x)
    res = CliRunner().invoke(cli, [
        "finetune", str(tmp_path / "net.onnx"), "--data", str(tmp_path / "unlabelled.npz"),
        "--levels", "2", "--epochs", "3", "--no-progress", "-o", str(tmp_path / "out.onnx")])
    assert res.exit_code == 0, res.output
    assert "loss: distillation from the input network's logits (no labels used)" in res.output
    assert "PASSED" in res.output
    tuned = onnx.load(tmp_path / "out.onnx")
    meta = {p.key: p.value for p in tuned.metadata_props}
    assert meta["onnx_rmpe.finetune.distill"] == "1.0"
    assert accuracy(run(tuned, xv)[0], yv) > 0.9


def test_onecycle_schedule_also_recovers_post_training_loss(relu_model, digits_data):
    (x, y), val = digits_data
    result = finetune(relu_model, (x, y), levels=1, epochs=3, schedule="onecycle", val=val,
                      progress=False)
    # measured: L=1 post-training QCFS 0.149 -> 0.851 (cosine, the default: 0.866)
    assert result.initial_val_accuracy < 0.5
    assert result.val_accuracy >= result.initial_val_accuracy + 0.3
    assert result.distill == 0.0


def test_augment_is_seeded_and_changes_training(relu_model, digits_data):
    (x, y), _ = digits_data
    runs = [finetune(relu_model, (x[:256], y[:256]), levels=2, epochs=1, augment=augment,
                     seed=1, progress=False) for augment in (True, True, False)]
    weights = [[t.SerializeToString() for t in r.model.graph.initializer] for r in runs]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]
    assert runs[0].history[0].loss != runs[2].history[0].loss
