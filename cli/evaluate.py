"""``onnx-rmpe evaluate``: accuracy of an ANN, or of an SNN at every step."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import (
    guard_outputs,
    json_option,
    model_argument,
    parse_steps,
    quiet,
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
@runtime_options
@json_option
def evaluate_cmd(model: Path, data: Path, steps: str | None, samples: int | None,
                 batch_size: int, threads: int | None, device: str, max_memory: int | None,
                 json_path: Path | None) -> None:
    """Print the accuracy of MODEL (ANN, QCFS or SNN) on labelled DATA."""
    from onnx_rmpe.evaluate import evaluate

    guard_outputs({"json_path": json_path}, {"model": model, "data": data})
    result = evaluate(model, data, steps=parse_steps(steps), batch_size=batch_size,
                      samples=samples, threads=threads, device=device, max_memory=max_memory,
                      progress=not quiet())
    print_accuracy(result)
    click.echo(f"accuracy: {result.accuracy:.4f}")
    write_json(json_path, result.as_dict())
