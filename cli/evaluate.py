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
    report_options,
    runtime_options,
    write_json,
)
from onnx_rmpe.cli.report import print_accuracy, print_snn_report
from onnx_rmpe.runtime.options import RuntimeOptions


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
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="ray: run the batches on a Ray cluster (RAY_ADDRESS, else a local one); "
                   "needs onnx-rmpe[ray].")
@runtime_options
@report_options
@json_option
def evaluate_cmd(model: Path, data: Path, steps: str | None, samples: int | None,
                 unroll: bool | None, engine: str, runtime: RuntimeOptions,
                 report_dir: Path | None, qcfs: Path | None, ann: Path | None,
                 energy_mac: float, energy_ac: float,
                 json_path: Path | None) -> None:
    """Print the accuracy of MODEL (ANN, QCFS or SNN) on labelled DATA.

    With --report DIR (SNN only): in the same pass, firing rates, synaptic operations
    against the ANN's MACs, energy per step, and PNG plots, written to DIR.
    """
    from onnx_rmpe.evaluation import evaluate
    from onnx_rmpe.reporting import report

    guard_outputs({"json_path": json_path},
                  {"model": model, "data": data, "qcfs": qcfs, "ann": ann})
    if report_dir is not None:
        rep = report(model, data, qcfs=qcfs, ann=ann, out_dir=report_dir,
                     energy_mac=energy_mac, energy_ac=energy_ac, batch_size=runtime.batch_size,
                     samples=samples, threads=runtime.threads, device=runtime.where,
                     progress=not quiet())
        if not quiet():
            print_snn_report(rep)
        if rep.accuracy_per_step:
            click.echo(f"accuracy: {rep.accuracy_per_step[-1]:.4f}")
        write_json(json_path, rep.as_dict())
        return
    result = evaluate(model, data, steps=parse_steps(steps), samples=samples, runtime=runtime,
                      unroll=unroll, engine=engine, progress=not quiet())
    print_accuracy(result)
    click.echo(f"accuracy: {result.accuracy:.4f}")
    write_json(json_path, result.as_dict())
