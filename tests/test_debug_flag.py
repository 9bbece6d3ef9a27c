"""``--debug``: debug logs, the passes' invariant checks, tracebacks on user errors."""

from __future__ import annotations

import os

import numpy as np
import onnx
from click.testing import CliRunner

from onnx_rmpe.cli.main import cli
from onnx_rmpe.passes.base import CHECK_ENV
from tests.graphs import conv_bn_relu


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_user_error_shows_traceback_only_with_debug(tmp_path):
    missing = tmp_path / "missing.onnx"
    plain = _invoke("inspect", missing)
    assert plain.exit_code == 1
    assert "error:" in plain.output and "Traceback" not in plain.output
    for args in (("--debug", "inspect", missing), ("inspect", missing, "--debug")):
        r = _invoke(*args)
        assert r.exit_code == 1
        assert "Traceback (most recent call last)" in r.output
        assert "error:" in r.output and "missing.onnx" in r.output
        assert r.output.index("Traceback") < r.output.index("error:")


def test_debug_turns_on_pass_checks_and_debug_logs(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECK_ENV, "0")
    model = conv_bn_relu(np.random.default_rng(0))
    onnx.save(model, tmp_path / "net.onnx")
    quiet = _invoke("inspect", tmp_path / "net.onnx")
    assert quiet.exit_code == 0 and "DEBUG" not in quiet.output
    assert os.environ[CHECK_ENV] == "0"
    r = _invoke("inspect", tmp_path / "net.onnx", "--debug")
    assert r.exit_code == 0, r.output
    assert os.environ[CHECK_ENV] == "1"
    assert "DEBUG onnx_rmpe" in r.output
