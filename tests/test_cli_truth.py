"""The CLI says what it does: help on every option, -v/-q anywhere, one-line usage errors,
the L that was used, extras that hold what their features import."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import onnx
import pytest
import tomllib
from click.testing import CliRunner

from onnx_rmpe.cli.main import cli
from onnx_rmpe.conversion import build_qcfs
from onnx_rmpe.data import Dataset
from tests.graphs import conv_bn_relu

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("truth")
    model = conv_bn_relu(rng)
    onnx.save(model, str(d / "net.onnx"))
    x = rng.normal(size=(64, 2, 6, 6)).astype(np.float32)
    np.savez(d / "calib.npz", x=x)
    qcfs, _ = build_qcfs(model, Dataset(x), levels=4)  # QCFS nodes: a trained model's form
    onnx.save(qcfs, str(d / "qcfs4.onnx"))
    return d


def test_every_option_has_help_text():
    missing = []
    for name, cmd in cli.commands.items():
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{name} {param.opts[0]}")
    assert not missing, missing


def test_usage_errors_are_one_line_and_exit_1(files):
    for args, flag in ((["convert", files / "net.onnx", "--T", "x"], "--T"),
                       (["convert", files / "net.onnx", "--bogus"], "--bogus"),
                       (["evaluate", files / "net.onnx"], "--data")):
        r = invoke(*args)
        errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert r.exit_code == 1 and len(errors) == 1 and flag in errors[0], r.output
        assert "Usage:" not in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_before_or_after_the_command(files, tmp_path, where):
    args = ["convert", files / "net.onnx", "--T", 2, "--calib", files / "calib.npz",
            "-o", tmp_path / "o.onnx"]
    args = ["-q", *args] if where == "before" else [*args, "-q"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "RMPE calibration" not in r.output  # the table is gone
    assert "wrote SNN" in r.output and "PASSED" in r.output


def test_verbose_after_the_command_shows_info_logs(files, tmp_path):
    r = invoke("convert", files / "net.onnx", "--T", 2, "--calib", files / "calib.npz",
               "--no-rmpe", "-o", tmp_path / "o.onnx", "-v")
    assert r.exit_code == 0 and "INFO onnx_rmpe" in r.output, r.output
    r = invoke("convert", files / "net.onnx", "--T", 2, "--calib", files / "calib.npz",
               "--no-rmpe", "-o", tmp_path / "o.onnx")
    assert "INFO onnx_rmpe" not in r.output


def test_printed_levels_are_the_ones_used(files, tmp_path):
    r = invoke("convert", files / "qcfs4.onnx", "--T", 2, "--calib", files / "calib.npz",
               "--no-rmpe", "-o", tmp_path / "a.onnx")
    assert r.exit_code == 0 and "L=4" in r.output, r.output
    r = invoke("convert", files / "qcfs4.onnx", "--T", 2, "--calib", files / "calib.npz",
               "--no-rmpe", "-L", 2, "-o", tmp_path / "b.onnx")
    assert r.exit_code == 0 and "L=4" in r.output and "levels=2 is ignored" in r.output
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "b.onnx")).metadata_props}
    assert meta["onnx_rmpe.levels"] == "4"
    r = invoke("convert", files / "net.onnx", "--T", 2, "--calib", files / "calib.npz",
               "--no-rmpe", "-o", tmp_path / "c.onnx")
    assert "L=8" in r.output


def test_check_line_is_one_line_whatever_the_width(files, tmp_path):
    r = invoke("convert", files / "net.onnx", "--T", 2, "--calib", files / "calib.npz",
               "-o", tmp_path / "o.onnx")
    line = next(ln for ln in r.output.splitlines() if ln.startswith("check on the calib"))
    assert line.rstrip().endswith(("calibration kept", "(previous potentials kept)")), line


def test_extras_hold_what_their_features_import():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(dep.startswith("onnxscript") for dep in extras["torch"])  # dynamo exporter
    assert any(dep.startswith("tf2onnx") for dep in extras["tf"])
    keras_src = (ROOT / "onnx_rmpe" / "keras.py").read_text()
    assert '"tf2onnx", "tf"' in keras_src
