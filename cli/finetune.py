"""``onnx-rmpe finetune``: QCFS fine-tuning of an ONNX ReLU classifier (needs torch)."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.finetune_options import echo_finetune, finetune_options
from onnx_rmpe.cli.options import guard_outputs, quiet
from onnx_rmpe.recipe import DEFAULT_LEVELS


def default_output(model: Path) -> Path:
    """``MODEL.onnx`` -> ``MODEL.qcfs.onnx`` beside the input."""
    return model.with_name(f"{model.stem}.qcfs.onnx")


@click.command("finetune")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training data: .npz with 'x' (model layout) and optional labels 'y' "
                   "(without 'y' fine-tuning distils MODEL's logits).")
@click.option("--levels", "-L", default=DEFAULT_LEVELS, show_default=True, type=int,
              help="QCFS quantization levels L.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output QCFS model [default: MODEL.qcfs.onnx beside MODEL].")
@click.option("--percentile", default=99.9, show_default=True, type=float,
              help="Percentile of positive pre-activations that initialises each threshold.")
@finetune_options("--batch-size", "--train-batch-size", batch_dest="batch_size")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def finetune_cmd(model: Path, data: Path, levels: int, output: Path | None, percentile: float,
                 finetune_options: dict, no_progress: bool) -> None:
    """Fine-tune the QCFS version of MODEL on DATA and save it for `convert`."""
    from onnx_rmpe.finetune import finetune
    from onnx_rmpe.modelio import save_model

    output = output or default_output(model)
    guard_outputs({"output": output}, {"model": model, "data": data,
                                       "val": finetune_options.get("val")})
    result = finetune(model, data, levels=levels, percentile=percentile, **finetune_options,
                      progress=not no_progress and not quiet())
    path = save_model(result.model, output)  # checked above: no input is overwritten
    echo_finetune(result)
    click.echo(f"saved {path}")
