"""RuntimeOptions: one value from the CLI's option group down to the jobs."""

from __future__ import annotations

import importlib

import numpy as np
from click.testing import CliRunner

from onnx_rmpe.cli.main import cli
from onnx_rmpe.runtime.options import RuntimeOptions, placement


def test_providers_win_over_device():
    assert placement("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert placement("cuda", None) == "cuda"
    assert RuntimeOptions(device="cuda", providers=("CPUExecutionProvider",)).where == \
        ["CPUExecutionProvider"]


def test_resolve_keeps_keywords_without_runtime():
    got = RuntimeOptions.resolve(None, batch_size=7, threads=2, device="cpu",
                                 providers=["CPUExecutionProvider"], max_memory=99)
    assert got == (7, 2, ["CPUExecutionProvider"], 99)


def test_resolve_runtime_wins_and_keeps_job_batch_default():
    rt = RuntimeOptions(device="cpu", threads=1, max_memory=5)
    assert RuntimeOptions.resolve(rt, batch_size=256, threads=4, device="cuda", providers=None,
                                  max_memory=None) == (256, 1, "cpu", 5)
    rt = RuntimeOptions(batch_size=32)
    assert RuntimeOptions.resolve(rt, batch_size=256, threads=None, device="cpu",
                                  providers=None, max_memory=None)[0] == 32


def test_cli_builds_one_runtime_value(tmp_path, monkeypatch):
    seen = {}
    module = importlib.import_module("onnx_rmpe.evaluation")

    def spy(model, data, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(module, "evaluate", spy)
    model, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    model.write_bytes(b"")
    np.savez(data, x=np.zeros((1, 1), np.float32), y=np.zeros(1, np.int64))
    result = CliRunner().invoke(cli, ["evaluate", str(model), "--data", str(data), "--threads", "3",
                                      "--batch-size", "16", "--max-memory", "1M"])
    assert result.exit_code == 0, result.output
    assert seen["runtime"] == RuntimeOptions(device="cpu", threads=3, batch_size=16,
                                             max_memory=1 << 20)
    assert "threads" not in seen and "device" not in seen
