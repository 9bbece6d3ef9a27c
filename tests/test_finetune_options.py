"""One set of fine-tuning options for `finetune` and `convert --finetune-data` (issue 15.7).

Same flags, help and defaults in both commands; `convert` trains with the fine-tuning batch
(`--train-batch-size`), not onnxruntime's `--batch-size`; fine-tuning options without
`--finetune-data` are refused instead of ignored.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_rmpe.cli.convert import convert_cmd
from onnx_rmpe.cli.finetune import finetune_cmd
from onnx_rmpe.cli.main import cli
from onnx_rmpe.conversion import convert
from onnx_rmpe.errors import OptionError
from onnx_rmpe.modelio import get_metadata
from onnx_rmpe.recipe import DEFAULT_LEVELS, FINETUNE_OPTIONS
from tests.graphs import conv_bn_relu

SHARED = [k for k in FINETUNE_OPTIONS if k != "batch_size"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("ftopts")
    onnx.save(conv_bn_relu(rng), str(d / "net.onnx"))
    np.savez(d / "train.npz", x=rng.normal(size=(96, 2, 6, 6)).astype(np.float32))
    return d


def _params(cmd):
    return {p.name: p for p in cmd.params}


def test_both_commands_have_the_same_options_help_and_defaults():
    conv, fine = _params(convert_cmd), _params(finetune_cmd)
    for name in SHARED:
        assert name in conv and name in fine, name
        assert (conv[name].default, conv[name].help, conv[name].opts) == \
            (fine[name].default, fine[name].help, fine[name].opts), name
    # the training batch: --batch-size in finetune (also --train-batch-size), and
    # --train-batch-size in convert, whose --batch-size is onnxruntime's
    assert conv["train_batch_size"].default == fine["batch_size"].default == 128
    assert set(fine["batch_size"].opts) == {"--batch-size", "--train-batch-size"}
    assert conv["train_batch_size"].opts == ["--train-batch-size"]
    assert conv["train_batch_size"].help == fine["batch_size"].help
    assert fine["levels"].default == DEFAULT_LEVELS and conv["levels"].default is None


def test_convert_trains_with_the_training_batch_not_onnxruntime_batch(files):
    plain = convert(files / "net.onnx", T=2, finetune_data=files / "train.npz", batch_size=7,
                    rmpe=False, finetune_options={"epochs": 1})
    meta = get_metadata(plain.finetune.model)
    assert meta["onnx_rmpe.finetune.batch_size"] == "128"  # finetune's default, not 7
    assert plain.levels == DEFAULT_LEVELS == plain.finetune.levels  # finetune's default L
    assert len(plain.finetune.history) == 1
    chosen = convert(files / "net.onnx", T=2, finetune_data=files / "train.npz", rmpe=False,
                     finetune_options={"epochs": 2, "batch_size": 32, "optimizer": "adam"})
    meta = get_metadata(chosen.finetune.model)
    assert (meta["onnx_rmpe.finetune.batch_size"], meta["onnx_rmpe.finetune.optimizer"]) == \
        ("32", "adam")
    assert len(chosen.finetune.history) == 2


@pytest.mark.parametrize(("options", "name"), [
    ({"epochs": 2}, "epochs"), ({"batch_size": 16}, "train_batch_size"),
    ({"augment": True}, "augment")])
def test_finetune_options_without_finetune_data_are_refused(files, options, name):
    with pytest.raises(OptionError, match="applies only with finetune_data") as err:
        convert(files / "net.onnx", T=2, rmpe=False, finetune_options=options)
    assert err.value.option == name


def test_unknown_finetune_option_is_refused(files):
    with pytest.raises(OptionError, match="unknown fine-tuning option.*bogus"):
        convert(files / "net.onnx", T=2, finetune_data=files / "train.npz",
                finetune_options={"bogus": 1})


@pytest.mark.parametrize(("args", "flag"), [
    (["--epochs", "2"], "--epochs"), (["--lr", "0.1"], "--lr"),
    (["--finetune-data", "{d}/train.npz", "--train-batch-size", "0"], "--train-batch-size"),
    (["--finetune-data", "{d}/train.npz", "--momentum", "1.5"], "--momentum")])
def test_cli_errors_name_the_flag(files, tmp_path, args, flag):
    out = tmp_path / "out.onnx"
    res = CliRunner().invoke(cli, ["convert", str(files / "net.onnx"), "--T", "2", "--no-rmpe",
                                   "-o", str(out), *[a.format(d=files) for a in args]])
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: option {flag}:"), res.output
    assert not out.exists()


def test_convert_prints_the_fine_tuning_like_finetune(files, tmp_path):
    res = CliRunner().invoke(cli, ["convert", str(files / "net.onnx"), "--T", "2", "--no-rmpe",
                                   "--finetune-data", str(files / "train.npz"), "--epochs", "2",
                                   "-o", str(tmp_path / "o.onnx"), "-q"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert any(ln.startswith("loss: distillation") for ln in lines)
    assert [ln.split(":")[0] for ln in lines if ln.startswith("epoch ")] == ["epoch 1", "epoch 2"]
    assert "L=4" in next(ln for ln in lines if ln.startswith("converted "))
