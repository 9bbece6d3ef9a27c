"""``onnx-rmpe finetune``: QCFS fine-tuning of an ONNX ReLU classifier (needs torch)."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import guard_outputs, quiet


def default_output(model: Path) -> Path:
    """``MODEL.onnx`` -> ``MODEL.qcfs.onnx`` beside the input."""
    return model.with_name(f"{model.stem}.qcfs.onnx")


@click.command("finetune")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training data: .npz with 'x' (model layout) and labels 'y'.")
@click.option("--levels", "-L", default=4, show_default=True, type=int,
              help="QCFS quantization levels L.")
@click.option("--epochs", default=3, show_default=True, type=int, help="Training epochs.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output QCFS model [default: MODEL.qcfs.onnx beside MODEL].")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Adam learning rate.")
@click.option("--batch-size", default=64, show_default=True, type=int,
              help="Training batch size.")
@click.option("--val", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Held-out data (.npz with 'x', 'y') for the accuracy after each epoch.")
@click.option("--percentile", default=99.9, show_default=True, type=float,
              help="Percentile of positive pre-activations that initialises each threshold.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the shuffling and initialisation.")
@click.option("--maxpool-to-avgpool", is_flag=True,
              help="Replace max pools by average pools (max pools convert exactly, so off "
                   "by default).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def finetune_cmd(model: Path, data: Path, levels: int, epochs: int, output: Path | None,
                 lr: float, batch_size: int, val: Path | None, percentile: float, seed: int,
                 maxpool_to_avgpool: bool, no_progress: bool) -> None:
    """Fine-tune the QCFS version of MODEL on labelled data and save it for `convert`."""
    from onnx_rmpe.finetune import finetune
    from onnx_rmpe.modelio import save_model

    output = output or default_output(model)
    guard_outputs({"output": output}, {"model": model, "data": data, "val": val})
    result = finetune(model, data, levels=levels, epochs=epochs, lr=lr, batch_size=batch_size,
                      val=val, percentile=percentile, seed=seed,
                      maxpool_to_avgpool=maxpool_to_avgpool,
                      progress=not no_progress and not quiet())
    path = save_model(result.model, output)  # checked above: no input is overwritten
    for h in result.history:
        acc = "" if h.val_accuracy is None else f", held-out accuracy {100 * h.val_accuracy:.2f}%"
        click.echo(f"epoch {h.epoch}: loss {h.loss:.4f}{acc} ({h.seconds:.1f}s)")
    if result.initial_val_accuracy is not None:
        click.echo(f"QCFS accuracy (L={levels}): {100 * result.initial_val_accuracy:.2f}% before, "
                   f"{100 * result.val_accuracy:.2f}% after fine-tuning")
    click.echo(f"saved {path}")
