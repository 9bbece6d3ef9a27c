"""``onnx-rmpe finetune``: QCFS fine-tuning of an ONNX ReLU classifier (needs torch)."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import guard_outputs, quiet
from onnx_rmpe.recipe import OPTIMIZERS, SCHEDULES


def default_output(model: Path) -> Path:
    """``MODEL.onnx`` -> ``MODEL.qcfs.onnx`` beside the input."""
    return model.with_name(f"{model.stem}.qcfs.onnx")


@click.command("finetune")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training data: .npz with 'x' (model layout) and optional labels 'y' "
                   "(without 'y' fine-tuning distils MODEL's logits).")
@click.option("--levels", "-L", default=4, show_default=True, type=int,
              help="QCFS quantization levels L.")
@click.option("--epochs", default=3, show_default=True, type=int, help="Training epochs.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output QCFS model [default: MODEL.qcfs.onnx beside MODEL].")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(OPTIMIZERS),
              help="Optimizer of the fine-tuning.")
@click.option("--lr", default=None, type=float,
              help="Peak learning rate [default: 0.01 for sgd, 0.001 for adam].")
@click.option("--momentum", default=0.9, show_default=True, type=float, help="SGD momentum.")
@click.option("--weight-decay", default=0.0, show_default=True, type=float,
              help="Weight decay (L2) of the optimizer.")
@click.option("--schedule", default="cosine", show_default=True, type=click.Choice(SCHEDULES),
              help="Learning-rate schedule, stepped per batch.")
@click.option("--batch-size", default=128, show_default=True, type=int,
              help="Training batch size.")
@click.option("--distill", default=None, type=float,
              help="Weight in [0, 1] of the loss that matches MODEL's logits (1 - it weighs "
                   "the cross-entropy) [default: 0 with labels, 1 without].")
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="Softmax temperature of the distillation loss.")
@click.option("--augment", is_flag=True, help="Random shifts of up to 2 pixels (images).")
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
                 optimizer: str, lr: float | None, momentum: float, weight_decay: float,
                 schedule: str, batch_size: int, distill: float | None, temperature: float,
                 augment: bool, val: Path | None, percentile: float, seed: int,
                 maxpool_to_avgpool: bool, no_progress: bool) -> None:
    """Fine-tune the QCFS version of MODEL on DATA and save it for `convert`."""
    from onnx_rmpe.finetune import describe_loss, finetune
    from onnx_rmpe.modelio import save_model

    output = output or default_output(model)
    guard_outputs({"output": output}, {"model": model, "data": data, "val": val})
    result = finetune(model, data, levels=levels, epochs=epochs, optimizer=optimizer, lr=lr,
                      momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                      batch_size=batch_size, distill=distill, temperature=temperature,
                      augment=augment, val=val, percentile=percentile, seed=seed,
                      maxpool_to_avgpool=maxpool_to_avgpool,
                      progress=not no_progress and not quiet())
    path = save_model(result.model, output)  # checked above: no input is overwritten
    click.echo(f"loss: {describe_loss(result.distill)}")
    for h in result.history:
        acc = "" if h.val_accuracy is None else f", held-out accuracy {100 * h.val_accuracy:.2f}%"
        click.echo(f"epoch {h.epoch}: loss {h.loss:.4f}{acc} ({h.seconds:.1f}s)")
    if result.initial_val_accuracy is not None:
        click.echo(f"QCFS accuracy (L={levels}): {100 * result.initial_val_accuracy:.2f}% before, "
                   f"{100 * result.val_accuracy:.2f}% after fine-tuning")
    click.echo(f"saved {path}")
