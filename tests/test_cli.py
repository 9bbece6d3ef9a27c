"""The CLI through click's CliRunner: exit codes, key lines, one bad input per command."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_rmpe.cli.main import cli
from tests.graphs import conv_bn_relu
from tests.helpers import export_torch, train


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_data):
    from tests.nets import vgg_like
    (x, y), (xt, yt) = digits_data
    d = tmp_path_factory.mktemp("cli")
    export_torch(train(vgg_like(), x, y, epochs=8), x, d / "net.onnx")
    np.savez(d / "calib.npz", x=x[:256], y=y[:256])
    np.savez(d / "test.npz", x=xt, y=yt)
    return d


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_convert_evaluate_inspect_calibrate(files):
    d = files
    r = invoke("convert", d / "net.onnx", "--T", 4, "--calib", d / "calib.npz",
               "--save-qcfs", d / "net.qcfs.onnx", "--json", d / "conv.json", "--threads", 1)
    assert r.exit_code == 0, r.output
    assert "RMPE calibration, T=4" in r.output and "PASSED" in r.output
    snn = d / "net.snn.onnx"
    assert "wrote SNN" in r.output and snn.is_file()
    report = json.loads((d / "conv.json").read_text())
    assert report["T"] == 4 and len(report["calibration"]["layers"]) == 4
    assert all(la["error_after"] <= la["error_before"] for la in report["calibration"]["layers"])

    r = invoke("evaluate", snn, "--data", d / "test.npz", "--json", d / "eval.json")
    assert r.exit_code == 0, r.output
    ev = json.loads((d / "eval.json").read_text())
    assert ev["kind"] == "snn" and ev["T"] == 4 and len(ev["accuracy_per_step"]) == 4
    assert ev["accuracy"] > 0.85 and f"accuracy: {ev['accuracy']:.4f}" in r.output

    r = invoke("evaluate", d / "net.onnx", "--data", d / "test.npz")
    assert r.exit_code == 0 and "ANN accuracy" in r.output

    r = invoke("inspect", snn)
    assert r.exit_code == 0, r.output
    # the check's verdict is recorded in the model as it was reported (no close call asserted)
    verdict = "layerwise" if report["calibration"]["accepted"] else "rejected"
    assert "SNN" in r.output and f"T=4 L=8 RMPE={verdict}" in r.output
    assert r.output.count("(IFNeuron)") == 4
    r = invoke("inspect", d / "net.onnx")
    assert "ANN" in r.output and "convertible activations: 4" in r.output
    assert "convertible: yes" in r.output

    r = invoke("calibrate", snn, "--qcfs", d / "net.qcfs.onnx", "--calib", d / "calib.npz",
               "-o", d / "re.snn.onnx", "--rmpe-granularity", "channel")
    assert r.exit_code == 0, r.output
    meta = {p.key: p.value for p in onnx.load(str(d / "re.snn.onnx")).metadata_props}
    assert meta["onnx_rmpe.rmpe_granularity"] == "channel"


def test_convert_no_rmpe_and_steps(files):
    d = files
    out = d / "plain.onnx"
    r = invoke("convert", d / "net.onnx", "--T", 8, "--calib", d / "calib.npz", "--no-rmpe",
               "-o", out)
    assert r.exit_code == 0 and "RMPE off" in r.output
    r = invoke("evaluate", out, "--data", d / "test.npz", "--T", "1,8")
    assert r.exit_code == 0
    lines = [ln for ln in r.output.splitlines() if ln.strip().startswith("│")]
    assert len(lines) == 2
    r = invoke("evaluate", out, "--data", d / "test.npz", "--T", "9")
    assert r.exit_code == 1 and "outside 1..8" in r.output


def test_bad_inputs_exit_1_without_traceback_or_output(tmp_path, files, rng):
    d = files
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    r = invoke("convert", junk, "--T", 4, "--calib", d / "calib.npz")
    assert r.exit_code == 1 and "junk.onnx" in r.output and "not an ONNX model" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "junk.snn.onnx").exists()

    leaky = tmp_path / "leaky.onnx"
    onnx.save(conv_bn_relu(rng, act="LeakyRelu"), str(leaky))
    before = leaky.read_bytes()
    np.savez(tmp_path / "c.npz", x=rng.normal(size=(8, 2, 6, 6)).astype(np.float32))
    r = invoke("convert", leaky, "--T", 4, "--calib", tmp_path / "c.npz")
    assert r.exit_code == 1 and "LeakyRelu" in r.output and "fine-tune" in r.output
    assert not (tmp_path / "leaky.snn.onnx").exists() and leaky.read_bytes() == before
    r = invoke("inspect", leaky)
    assert r.exit_code == 0 and "blocks conversion: 1 node(s)" in r.output

    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 28, 28), np.float32))
    r = invoke("convert", d / "net.onnx", "--T", 4, "--calib", tmp_path / "wrong.npz",
               "-o", tmp_path / "out.onnx")
    assert r.exit_code == 1 and "[4, 3, 28, 28]" in r.output and "input" in r.output
    assert not (tmp_path / "out.onnx").exists()

    r = invoke("evaluate", d / "net.onnx", "--data", tmp_path / "c.npz")
    assert r.exit_code == 1 and "no labels" in r.output
    r = invoke("inspect", tmp_path / "missing.onnx")
    assert r.exit_code != 0 and "missing.onnx" in r.output
    r = invoke("convert", d / "net.onnx", "--T", 0, "--calib", d / "calib.npz")
    assert r.exit_code == 1 and "--T" in r.output


def test_streaming_mode_matches_multistep(files):
    d = files
    for mode in ("multistep", "streaming"):
        r = invoke("convert", d / "net.onnx", "--T", 3, "--calib", d / "calib.npz", "--mode",
                   mode, "-o", d / f"{mode}.onnx")
        assert r.exit_code == 0 and mode in r.output, r.output
        r = invoke("evaluate", d / f"{mode}.onnx", "--data", d / "test.npz", "--json",
                   d / f"{mode}.json")
        assert r.exit_code == 0, r.output
    multi = json.loads((d / "multistep.json").read_text())
    stream = json.loads((d / "streaming.json").read_text())
    assert stream["kind"] == "snn-streaming" and stream["T"] == 3
    assert stream["accuracy_per_step"] == multi["accuracy_per_step"]
    r = invoke("inspect", d / "streaming.onnx")
    assert "state inputs" in r.output and ".v (state)" in r.output


def test_chunked_and_unrolled_modes_match_multistep(files):
    d = files
    runs = {"multistep": [], "chunked": ["--chunk", 2], "unrolled": [],
            "budget": ["--mode", "chunked", "--max-memory", "1000M"]}
    for name, extra in runs.items():
        mode = ["--mode", name] if name != "budget" else []
        r = invoke("convert", d / "net.onnx", "--T", 4, "--calib", d / "calib.npz", *mode,
                   *extra, "-o", d / f"{name}.onnx")
        assert r.exit_code == 0, r.output
        r = invoke("evaluate", d / f"{name}.onnx", "--data", d / "test.npz", "--json",
                   d / f"{name}.json")
        assert r.exit_code == 0, r.output
    got = {n: json.loads((d / f"{n}.json").read_text()) for n in runs}
    assert got["chunked"]["kind"] == "snn-chunked" and got["unrolled"]["kind"] == "snn-unrolled"
    for name in runs:  # the same spikes (up to rounding, tests/test_forms.py): same accuracy
        assert got[name]["T"] == 4
        np.testing.assert_allclose(got[name]["accuracy_per_step"],
                                   got["multistep"]["accuracy_per_step"], atol=0.02)
    meta = {p.key: p.value for p in onnx.load(str(d / "budget.onnx")).metadata_props}
    assert meta["onnx_rmpe.chunk"] == "4"  # a large budget: the whole T in one call
    r = invoke("convert", d / "net.onnx", "--T", 4, "--calib", d / "calib.npz", "--mode",
               "chunked", "--chunk", 3, "-o", d / "bad.onnx")
    assert r.exit_code == 1 and "--chunk" in r.output and not (d / "bad.onnx").exists()
    r = invoke("inspect", d / "chunked.onnx")
    assert r.exit_code == 0 and "k steps per call" in r.output
    r = invoke("inspect", d / "unrolled.onnx")
    assert r.exit_code == 0 and "SNN-UNROLLED" in r.output and "T=4" in r.output


def test_convert_with_finetuning_in_one_command(files):
    d = files
    r = invoke("convert", d / "net.onnx", "--T", 2, "--finetune-data", d / "calib.npz",
               "--epochs", 1, "--levels", 4, "-o", d / "ft.onnx")
    assert r.exit_code == 0, r.output
    meta = {p.key: p.value for p in onnx.load(str(d / "ft.onnx")).metadata_props}
    assert meta["onnx_rmpe.levels"] == "4" and meta["onnx_rmpe.rmpe"] in ("layerwise", "rejected")
    assert any(k.startswith("onnx_rmpe.finetune") for k in meta), sorted(meta)
