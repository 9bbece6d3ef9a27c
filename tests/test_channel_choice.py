"""The label-free choice between per-channel and per-layer thresholds (``per_channel="auto"``,
the default): it keeps the conversion with the smaller output error on the calibration data,
records both errors, forcing still works, it does not depend on the batch size, and it
skips the second conversion where no layer can be rescaled or the thresholds are not refined."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnx_rmpe import conversion
from onnx_rmpe.channel_choice import METADATA_KEY, NOISE
from onnx_rmpe.conversion import convert
from onnx_rmpe.modelio import get_metadata
from onnx_rmpe.refine import TIE
from onnx_rmpe.thresholds import relu_reference
from tests.helpers import run
from tests.test_equalize_channels import _data, dense_like

T = 2


@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(5)
    return dense_like(rng), _data(rng, 96)


@pytest.fixture(scope="module")
def auto(net):
    ann, x = net
    return convert(ann, T=T, calib=x, threads=1)


def _output_error(result, x) -> float:
    """Mean squared distance of the SNN's output to the ReLU ANN's, measured here."""
    want = run(relu_reference(result.qcfs), x)[0].astype(np.float64)
    return float(np.mean((run(result.snn, x)[0] - want) ** 2))


def test_auto_keeps_the_smaller_output_error(net, auto):
    ann, x = net
    choice = auto.per_channel
    errors = choice.errors
    assert set(errors) == {"channel", "layer"} and choice.reason != "forced"
    _assert_rule(choice.as_dict())
    # the recorded error is the kept SNN's, measured independently on the calibration data
    assert errors[choice.chosen] == pytest.approx(_output_error(auto, x), rel=1e-3)
    assert json.loads(get_metadata(auto.snn)[METADATA_KEY]) == json.loads(
        choice.as_metadata())
    assert get_metadata(auto.qcfs)["onnx_rmpe.thresholds_per"] == choice.chosen
    # forcing the other one gives the other recorded error; forcing the kept one, the same SNN
    other = "layer" if choice.chosen == "channel" else "channel"
    forced = {scope: convert(ann, T=T, calib=x, threads=1, per_channel=scope == "channel")
              for scope in ("channel", "layer")}
    assert _output_error(forced[other], x) == pytest.approx(errors[other], rel=1e-3)
    for scope, result in forced.items():
        assert result.per_channel.reason == "forced" and result.per_channel.errors == {}
        assert get_metadata(result.qcfs)["onnx_rmpe.thresholds_per"] == scope
    np.testing.assert_array_equal(run(forced[choice.chosen].snn, x)[0], run(auto.snn, x)[0])


def _assert_rule(choice: dict) -> None:
    """Per layer only when its error is lower by TIE and by NOISE standard errors of the
    paired per-sample difference; per channel otherwise, with the reason."""
    errors, diff = choice["output_error"], choice["difference"]
    assert set(diff) == {"mean", "se"} and diff["se"] > 0
    beyond = diff["mean"] < -NOISE * diff["se"]
    if choice["chosen"] == "layer":
        assert errors["layer"] < errors["channel"] * (1 - TIE) and beyond, choice
    elif choice["reason"] == "within noise":
        assert errors["layer"] < errors["channel"] * (1 - TIE) and not beyond, choice
    else:
        assert choice["chosen"] == "channel" and errors["channel"] * (1 - TIE) <= errors["layer"]


def test_noise_margin_keeps_per_channel_unless_per_layer_is_clearly_better():
    """Synthetic candidates: per layer 5 % lower on average but noisy -> per channel kept
    ('within noise'); consistently lower per sample -> per layer."""
    from onnx_rmpe.channel_choice import choose

    rng = np.random.default_rng(0)
    channel = rng.exponential(1.0, 512)
    noisy = channel * 0.95 + rng.normal(0, 1.0, 512)
    noisy += channel.mean() * 0.95 - noisy.mean()  # mean exactly 5 % lower
    clear = channel * 0.95
    for layer, expect in ((noisy, ("channel", "within noise")),
                          (clear, ("layer", "smaller output error"))):
        samples = {True: channel, False: layer}
        kept, choice = choose(lambda pc: pc, lambda c: "channel" if c else "layer",
                              lambda c, s=samples: float(s[c].mean()), "auto",
                              samples_of=lambda c, s=samples: s[c])
        assert (choice.chosen, choice.reason) == expect
        assert kept is (expect[0] == "channel")
        _assert_rule(choice.as_dict())


def test_auto_is_independent_of_the_batch_size(net, auto):
    ann, x = net
    again = convert(ann, T=T, calib=x, threads=1, batch_size=7)
    assert again.per_channel.chosen == auto.per_channel.chosen
    for scope, error in auto.per_channel.errors.items():
        assert again.per_channel.errors[scope] == pytest.approx(error, rel=1e-4)
    assert again.thresholds == pytest.approx(auto.thresholds, rel=1e-6)
    np.testing.assert_allclose(run(again.snn, x)[0], run(auto.snn, x)[0], rtol=0, atol=1e-4)


def test_no_second_conversion_where_no_layer_can_be_rescaled(digits_relu_cnn, digits_data,
                                                             monkeypatch):
    """The digits CNN's activations are read by a Flatten and a Gemm: nothing to rescale."""
    (x, _), _ = digits_data
    calls = []
    build = conversion._build_snn
    monkeypatch.setattr(conversion, "_build_snn",
                        lambda *a, **k: calls.append(k["per_channel"]) or build(*a, **k))
    result = convert(digits_relu_cnn, T=T, calib=x[:64], threads=1, thresholds="percentile",
                     rmpe=False)
    assert calls == [True]
    assert result.per_channel.chosen == "layer"
    assert result.per_channel.reason == "no layer can be rescaled"
    assert get_metadata(result.snn)["onnx_rmpe.thresholds_per"] == "layer"


def test_cli_default_is_auto_and_flags_force(tmp_path, net):
    from click.testing import CliRunner

    from onnx_rmpe.cli.main import cli

    ann, x = net
    onnx.save(ann, tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", x=x)
    found = {}
    for name, flags in (("auto", []), ("percentile", ["--thresholds", "percentile"]),
                        ("forced", ["--thresholds", "percentile", "--per-layer"])):
        out = tmp_path / f"{name}.json"
        args = ["convert", str(tmp_path / "net.onnx"), "--T", "4", "--calib",
                str(tmp_path / "calib.npz"), "--no-rmpe", "--threads", "1",
                "-o", str(tmp_path / f"{name}.onnx"), "--json", str(out)]
        result = CliRunner().invoke(cli, args + flags)
        assert result.exit_code == 0, result.output
        found[name] = json.loads(out.read_text())["per_channel"], result.output
    choice, output = found["auto"]
    errors = choice["output_error"]
    assert set(errors) == {"channel", "layer"} and f"thresholds per {choice['chosen']}" in output
    _assert_rule(choice)
    # thresholds that are not refined: no second conversion, per channel, said so
    choice, output = found["percentile"]
    assert choice["chosen"] == "channel" and choice["reason"] == "not compared"
    assert choice["output_error"] == {} and "not compared with per layer" in output
    assert found["forced"][0] == {"chosen": "layer", "reason": "forced",
                                  "output_error": {}, "refine_errors": {}, "difference": {}}


def test_auto_does_not_compare_where_thresholds_are_not_refined(net, monkeypatch):
    """T above refine.MAX_T: the per-channel conversion is kept, no second one."""
    ann, x = net
    calls = []
    build = conversion._build_snn
    monkeypatch.setattr(conversion, "_build_snn",
                        lambda *a, **k: calls.append(k["per_channel"]) or build(*a, **k))
    result = convert(ann, T=16, calib=x[:32], threads=1, rmpe=False)
    assert calls == [True]
    assert (result.per_channel.chosen, result.per_channel.reason) == ("channel", "not compared")
    assert get_metadata(result.qcfs)["onnx_rmpe.thresholds_per"] == "channel"
