"""``onnx-rmpe finetune-snn``: SNN-level fine-tuning of a converted SNN (needs torch)."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import guard_outputs
from onnx_rmpe.finetune_snn import NEURON_LR, WEIGHT_LR


@click.command("finetune-snn")
@click.argument("snn", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training data: .npz with 'x' and optional labels 'y'.")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The ANN (ONNX) whose logits the SNN learns to match "
                                 "(needed for data without labels).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output SNN [default: SNN.ft.onnx beside SNN].")
@click.option("--steps", default=200, show_default=True, type=int, help="Optimizer steps.")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Batch size.")
@click.option("--lr", default=NEURON_LR, show_default=True, type=float,
              help="Adam learning rate of thresholds and initial potentials.")
@click.option("--train-weights", is_flag=True, help="Also train weights and biases.")
@click.option("--weight-lr", default=WEIGHT_LR, show_default=True, type=float,
              help="Adam learning rate of the weights (with --train-weights).")
@click.option("--distill", default=None, type=float,
              help="Weight in [0, 1] of the distillation loss [default: 1 with --teacher, "
                   "else 0].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the batches.")
def finetune_snn_cmd(snn: Path, data: Path, teacher: Path | None, output: Path | None,
                     steps: int, batch_size: int, lr: float, train_weights: bool,
                     weight_lr: float, distill: float | None, seed: int) -> None:
    """Fine-tune the IF neurons of SNN (written by `convert`) for its T on DATA."""
    from onnx_rmpe.finetune_snn import finetune_snn
    from onnx_rmpe.modelio import save_model

    output = output or snn.with_name(f"{snn.stem}.ft.onnx")
    guard_outputs({"output": output}, {"snn": snn, "data": data, "teacher": teacher})
    result = finetune_snn(snn, data, teacher=teacher, steps=steps, batch_size=batch_size,
                          lr=lr, train_weights=train_weights, weight_lr=weight_lr,
                          distill=distill, seed=seed)
    path = save_model(result.model, output)
    note = " (no gain: the input's values were kept)" if result.kept_input else ""
    click.echo(f"T={result.T}: loss on the first training samples {result.loss_before:.4f} -> "
               f"{result.loss_after:.4f}{note}")
    click.echo(f"saved {path}")
