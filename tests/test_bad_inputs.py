"""Every bad input of issue 9: exit 1 with one line naming the culprit, no traceback, no file
left behind, every input unchanged (by hash).

Models are tiny graphs built in code (no training), so the whole file runs in seconds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnx_rmpe.cli.main import cli
from onnx_rmpe.conversion import convert
from onnx_rmpe.errors import ConversionError, OptionError, OutputPathError
from onnx_rmpe.outputs import (
    TMP_PREFIX,
    WORK_PREFIX,
    check_outputs,
    remove_stale_work_dirs,
    write_bytes,
)
from tests.graphs import conv_bn_relu, make_model, vi


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A model, its data, its converted SNN and QCFS ANN, in one folder."""
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("bad")
    onnx.save(conv_bn_relu(rng), str(d / "net.onnx"))
    x = rng.normal(size=(64, 2, 6, 6)).astype(np.float32)
    np.savez(d / "calib.npz", x=x, y=rng.integers(0, 3, 64))
    result = convert(d / "net.onnx", T=2, calib=d / "calib.npz", output=d / "net.snn.onnx",
                     save_qcfs=d / "net.qcfs.onnx", threads=1)
    assert result.output_path.is_file()
    return d


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _fail(folder: Path, *args, expect: str):
    """Run the CLI; assert exit 1, one error line naming ``expect``, nothing changed."""
    before = _digest(folder)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    out = result.output
    assert result.exit_code == 1, out
    assert "Traceback" not in out and isinstance(result.exception, SystemExit), out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and expect in out, out
    assert _digest(folder) == before, "an input changed or a file was left behind"
    return out


# ----------------------------------------------------------------------- outputs that destroy
@pytest.mark.parametrize("args, expect", [
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/o.onnx",
      "--json", "{d}/net.onnx"], "--json"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/o.onnx",
      "--json", "{d}/calib.npz"], "--json"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/o.onnx",
      "--save-qcfs", "{d}/net.onnx"], "--save-qcfs"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/calib.npz"],
     "--output"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/net.onnx"],
     "the input"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/same.onnx",
      "--save-qcfs", "{d}/same.onnx"], "also the output"),
    (["calibrate", "{d}/net.snn.onnx", "--qcfs", "{d}/net.qcfs.onnx", "--calib",
      "{d}/calib.npz", "-o", "{d}/net.qcfs.onnx"], "--output"),
    (["calibrate", "{d}/net.snn.onnx", "--qcfs", "{d}/net.qcfs.onnx", "--calib",
      "{d}/calib.npz", "-o", "{d}/calib.npz"], "--output"),
    (["calibrate", "{d}/net.snn.onnx", "--qcfs", "{d}/net.qcfs.onnx", "--calib",
      "{d}/calib.npz", "-o", "{d}/net.snn.onnx"], "--output"),
    (["evaluate", "{d}/net.onnx", "--data", "{d}/calib.npz", "--json", "{d}/calib.npz"],
     "--json"),
    (["inspect", "{d}/net.onnx", "--json", "{d}/net.onnx"], "--json"),
    (["finetune", "{d}/net.onnx", "--data", "{d}/calib.npz", "-o", "{d}/net.onnx"], "--output"),
    (["finetune", "{d}/net.onnx", "--data", "{d}/calib.npz", "-o", "{d}/calib.npz"],
     "--output"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o",
      "/proc/self/out.onnx"], "system file system"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o",
      "{d}/calib.npz/out.onnx"], "not a folder"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/o.onnx",
      "--json", "{d}/calib.npz/x.json"], "not a folder"),
])
def test_outputs_never_overwrite_inputs(work, args, expect):
    _fail(work, *[str(a).format(d=work) for a in args], expect=expect)


def test_outputs_through_a_symlink_to_an_input_are_refused(work, tmp_path):
    link = tmp_path / "link.onnx"
    link.symlink_to(work / "net.onnx")
    with pytest.raises(OutputPathError, match="the input model"):
        check_outputs({"output": link}, {"model": work / "net.onnx"})


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_outputs_that_are_not_regular_files_are_refused(tmp_path, kind):
    if kind == "fifo":
        target = tmp_path / "pipe.onnx"
        os.mkfifo(target)
    elif kind == "folder":
        target = tmp_path / "dir.onnx"
        target.mkdir()
    else:  # only checked, never written
        target = Path("/dev/null")
    with pytest.raises(OutputPathError):
        check_outputs({"output": target})
    assert Path("/dev/null").is_char_device()


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_bytes(tmp_path / "m.onnx", b"abc")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644 and path.read_bytes() == b"abc"


def test_write_failure_is_a_user_error_and_leaves_nothing(tmp_path, monkeypatch):
    def read_only(*_args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(OutputPathError, match="read-only"):
        write_bytes(tmp_path / "m.onnx", b"abc", name="output")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_and_work_folders_are_removed(tmp_path):
    dead = tmp_path / f"{TMP_PREFIX}999999999-x.onnx"  # no such process
    dead.write_bytes(b"half a model")
    write_bytes(tmp_path / "m.onnx", b"abc")
    assert not dead.exists() and (tmp_path / "m.onnx").exists()
    import tempfile

    stale = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    fresh = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    old = time.time() - 3 * 24 * 3600
    os.utime(stale, (old, old))
    try:
        assert remove_stale_work_dirs() >= 1
        assert not stale.exists() and fresh.exists()
    finally:
        fresh.rmdir()


def test_json_into_a_new_folder_is_written_with_the_model(work, tmp_path):
    out = tmp_path / "new" / "deeper" / "r.json"
    r = CliRunner().invoke(cli, ["convert", str(work / "net.onnx"), "--T", "2", "--calib",
                                 str(work / "calib.npz"), "--no-rmpe", "-o",
                                 str(tmp_path / "o.onnx"), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and (tmp_path / "o.onnx").is_file()


# ----------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("args, expect", [
    (["evaluate", "{d}/net.onnx", "--data", "{d}/calib.npz", "--batch-size", 0], "--batch-size"),
    (["evaluate", "{d}/net.onnx", "--data", "{d}/calib.npz", "--batch-size", -1],
     "--batch-size"),
    (["evaluate", "{d}/net.onnx", "--data", "{d}/calib.npz", "--samples", 0], "--samples"),
    (["evaluate", "{d}/net.onnx", "--data", "{d}/calib.npz", "--samples", -1], "--samples"),
    (["evaluate", "{d}/net.onnx", "--data", "{d}/calib.npz", "--threads", -3], "--threads"),
    (["calibrate", "{d}/net.snn.onnx", "--qcfs", "{d}/net.qcfs.onnx", "--calib",
      "{d}/calib.npz", "-o", "{d}/x.onnx", "--batch-size", 0], "--batch-size"),
    (["calibrate", "{d}/net.snn.onnx", "--qcfs", "{d}/net.qcfs.onnx", "--calib",
      "{d}/calib.npz", "-o", "{d}/x.onnx", "--calib-samples", 0], "--calib-samples"),
    (["convert", "{d}/net.onnx", "--T", 100000, "--calib", "{d}/calib.npz", "-o", "{d}/x.onnx"],
     "--T"),
    (["convert", "{d}/net.onnx", "--T", 0, "--calib", "{d}/calib.npz", "-o", "{d}/x.onnx"],
     "--T"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/x.onnx",
      "--percentile", 0], "--percentile"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/x.onnx",
      "--threads", -3], "--threads"),
    (["convert", "{d}/net.onnx", "--T", 2000, "--calib", "{d}/calib.npz", "-o", "{d}/x.onnx",
      "--max-memory", "64K"], "--max-memory"),
    (["convert", "{d}/net.onnx", "--T", 2, "--calib", "{d}/calib.npz", "-o", "{d}/x.onnx",
      "--max-memory", "lots"], "--max-memory"),
    (["demo", "--T", 0, "--out-dir", "{d}/demo"], "--T"),
])
def test_bad_options_are_refused_by_flag(work, args, expect):
    _fail(work, *[str(a).format(d=work) for a in args], expect=expect)


@pytest.mark.parametrize("kwargs, name", [
    ({"T": 0}, "T"), ({"T": "4"}, "T"), ({"T": 2.0}, "T"), ({"T": True}, "T"),
    ({"T": 2, "levels": 2.5}, "levels"), ({"T": 2, "batch_size": 0}, "batch_size"),
    ({"T": 2, "threads": -3}, "threads"), ({"T": 2, "percentile": float("nan")}, "percentile"),
    ({"T": 2, "calib_samples": -1}, "calib_samples"), ({"T": 2, "mode": "fast"}, "mode"),
])
def test_api_names_the_parameter(work, kwargs, name):
    with pytest.raises(OptionError) as err:
        convert(work / "net.onnx", calib=work / "calib.npz", **kwargs)
    assert err.value.option == name and "--" not in str(err.value).split(":")[0]


# --------------------------------------------------------------------------------- bad data
def _save(folder: Path, name: str, **arrays) -> Path:
    path = folder / name
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _x(n=16):
    return np.random.default_rng(1).normal(size=(n, 2, 6, 6)).astype(np.float32)


@pytest.mark.parametrize("make, expect", [
    (lambda: {"x": np.where(np.arange(16 * 72).reshape(16, 2, 6, 6) == 100, np.nan, _x())},
     "1 NaN or infinite value(s), the first at index (1, 0, 4, 4)"),
    (lambda: {"x": np.where(np.arange(16 * 72).reshape(16, 2, 6, 6) < 3, np.inf, _x())},
     "3 NaN or infinite"),
    (lambda: {"x": _x(), "y": np.array(["a"] * 16)}, "dtype <U1"),
    (lambda: {"x": _x(), "y": np.array(3)}, "'y' is a scalar"),
    (lambda: {"x": _x(), "y": np.full(16, 7)}, "outside 0..2"),
    (lambda: {"x": _x(), "y": np.full(16, -1)}, "not class indices"),
    (lambda: {"x": _x(), "y": np.full(16, 1.5)}, "not class indices"),
    (lambda: {"x": _x(), "y": np.full(16, np.nan)}, "not class indices"),
    (lambda: {"x": _x(), "y": np.zeros(15, int)}, "16 inputs but 15 labels"),
    (lambda: {"x": np.float32(1.0)}, "'x' is a scalar"),
])
def test_bad_data_is_refused_with_the_reason(work, tmp_path, make, expect):
    data = _save(tmp_path, "d.npz", **make())
    cmd = ["evaluate", work / "net.onnx", "--data", data]
    if "NaN or inf" in expect or "scalar; expected a batch" in expect or "'x'" in expect:
        cmd = ["convert", work / "net.onnx", "--T", 2, "--calib", data, "-o", tmp_path / "o.onnx"]
    _fail(tmp_path, *cmd, expect=expect)


def test_npz_named_npy_is_read(work, tmp_path):
    path = tmp_path / "data.npy"
    with open(path, "wb") as fh:
        np.savez(fh, x=_x(), y=np.zeros(16, int))
    r = CliRunner().invoke(cli, ["evaluate", str(work / "net.onnx"), "--data", str(path)])
    assert r.exit_code == 0 and "accuracy:" in r.output, r.output


def test_float_labels_that_are_integers_are_accepted(work, tmp_path):
    data = _save(tmp_path, "d.npz", x=_x(), y=np.ones(16, np.float32))
    r = CliRunner().invoke(cli, ["evaluate", str(work / "net.onnx"), "--data", str(data)])
    assert r.exit_code == 0, r.output


# -------------------------------------------------------------------------------- bad models
def _float16_model() -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16,
                                                                         ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _left_matmul() -> onnx.ModelProto:  # y = W @ x with x [3, N]
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["w", "x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return make_model(nodes, [vi("x", [3, "N"])], [vi("y", [4, "N"])], [("w", w)])


def _dynamic_spatial(rng) -> onnx.ModelProto:
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(3, 4 * 36)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["a"]), helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    return make_model(nodes, [vi("x", ["N", 2, "H", "W"])], [vi("y", ["N", 3])],
                      [("w", w), ("fc", fc)])


def _two_inputs(rng) -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    return make_model(nodes, [vi("a", ["N", 3]), vi("b", ["N", 3])], [vi("y", ["N", 3])])


def test_float16_model_is_refused_by_convert_and_flagged_by_inspect(tmp_path):
    path = tmp_path / "half.onnx"
    onnx.save(_float16_model(), str(path))
    np.savez(tmp_path / "c.npz", x=np.ones((4, 3), np.float32))
    _fail(tmp_path, "convert", path, "--T", 2, "--calib", tmp_path / "c.npz", "-o",
          tmp_path / "o.onnx", expect="float16")
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert "float16" in r.output and "convertible: yes" not in r.output, r.output


def test_batch_axis_not_first_is_refused_and_flagged(tmp_path):
    path = tmp_path / "left.onnx"
    onnx.save(_left_matmul(), str(path))
    np.savez(tmp_path / "c.npz", x=np.ones((3, 4), np.float32))
    _fail(tmp_path, "convert", path, "--T", 2, "--calib", tmp_path / "c.npz", "-o",
          tmp_path / "o.onnx", expect="batch")
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 1 or "batch" in r.output, r.output
    assert "convertible: yes" not in r.output


def test_data_of_another_size_for_a_dynamic_model(tmp_path, rng):
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_spatial(rng), str(path))
    data = _save(tmp_path, "d.npz", x=np.ones((4, 2, 8, 8), np.float32), y=np.zeros(4, int))
    out = _fail(tmp_path, "evaluate", path, "--data", data, expect="onnxruntime cannot run")
    assert "[4, 2, 8, 8]" in out


def test_two_input_model_in_evaluate(tmp_path, rng):
    path = tmp_path / "two.onnx"
    onnx.save(_two_inputs(rng), str(path))
    data = _save(tmp_path, "d.npz", x=np.ones((4, 3), np.float32), y=np.zeros(4, int))
    _fail(tmp_path, "evaluate", path, "--data", data, expect="2 inputs")


def test_converting_an_snn_again_says_so(work):
    _fail(work, "convert", work / "net.snn.onnx", "--T", 2, "--calib", work / "calib.npz", "-o",
          work / "again.onnx", expect="already a spiking network")


@pytest.mark.parametrize("qcfs, expect", [("net.snn.onnx", "is an SNN"),
                                          ("net.onnx", "not a QCFS ANN")])
def test_calibrate_needs_the_qcfs_model(work, qcfs, expect):
    _fail(work, "calibrate", work / "net.snn.onnx", "--qcfs", work / qcfs, "--calib",
          work / "calib.npz", "-o", work / "x.onnx", expect=expect)


def test_missing_external_data_is_named(tmp_path, rng):
    model = conv_bn_relu(rng)
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    out = _fail(tmp_path, "inspect", path, expect="external data file 'ext.data'")
    assert "not an ONNX model" not in out


def test_opset_newer_than_onnx_knows(tmp_path, rng):
    model = conv_bn_relu(rng)
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    path = tmp_path / "new.onnx"
    onnx.save(model, str(path))
    _fail(tmp_path, "inspect", path, expect="is newer than this onnx")
    np.savez(tmp_path / "c.npz", x=_x())
    _fail(tmp_path, "convert", path, "--T", 2, "--calib", tmp_path / "c.npz", "-o",
          tmp_path / "o.onnx", expect="is newer than this onnx")


def test_memory_budget_shrinks_the_batch_without_changing_results(work):
    from onnx_rmpe.evaluation import evaluate

    small = evaluate(work / "net.snn.onnx", work / "calib.npz", batch_size=64,
                     max_memory=200_000)
    full = evaluate(work / "net.snn.onnx", work / "calib.npz", batch_size=64)
    assert small.accuracy_per_step == full.accuracy_per_step
    with pytest.raises(ConversionError, match="per sample"):
        evaluate(work / "net.snn.onnx", work / "calib.npz", max_memory=1000)


def test_full_disk_stops_calibration_with_the_directory_named(work, monkeypatch):
    """The spike caches check the free disk space before each file: a clear error naming
    the directory and TMPDIR, exit 1, no output file, inputs untouched."""
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 20))
    out = _fail(work, "convert", work / "net.onnx", "--T", 2, "--calib", work / "calib.npz",
                "-o", work / "full.onnx", expect="not enough disk space")
    assert "TMPDIR" in out and "onnx-rmpe-work-" in out
