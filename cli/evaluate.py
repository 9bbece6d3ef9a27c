"""``onnx-rmpe evaluate``: accuracy of an ANN, or of an SNN at every step."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import (
    json_option,
    model_argument,
    parse_steps,
    runtime_options,
    write_json,
)
from onnx_rmpe.cli.report import print_accuracy


@click.command("evaluate")
@model_argument
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with arrays x (model layout) and y (labels).")
@click.option("--T", "steps", default=None,
              help="SNN steps to report, comma-separated (default: every step).")
@click.option("--samples", default=None, type=int, help="Use only the first N samples.")
@click.option("--unroll/--no-unroll", default=None,
              help="Run a multi-step SNN network-unrolled (same outputs, faster) [default: "
                   "when T <= 64].")
@runtime_options
@json_option
def evaluate_cmd(model: Path, data: Path, steps: str | None, samples: int | None,
                 unroll: bool | None, batch_size: int, threads: int | None, device: str,
                 json_path: Path | None) -> None:
    """Print the accuracy of MODEL (ANN, QCFS or SNN) on labelled DATA."""
    from onnx_rmpe.evaluate import evaluate

    result = evaluate(model, data, steps=parse_steps(steps), batch_size=batch_size,
                      samples=samples, threads=threads, device=device, unroll=unroll,
                      progress=True)
    print_accuracy(result)
    click.echo(f"accuracy: {result.accuracy:.4f}")
    write_json(json_path, result.as_dict())
