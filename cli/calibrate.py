"""``onnx-rmpe calibrate``: (re)calibrate a converted SNN on new data."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import (
    guard_outputs,
    json_option,
    model_argument,
    quiet,
    runtime_options,
    write_json,
)
from onnx_rmpe.cli.report import print_calibration
from onnx_rmpe.runtime.options import RuntimeOptions


@click.command("calibrate")
@model_argument
@click.option("--qcfs", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The QCFS ANN the SNN came from (convert --save-qcfs).")
@click.option("--calib", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration inputs: .npz with array x, or .npy.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output SNN [default: MODEL.calibrated.onnx beside MODEL].")
@click.option("--calib-samples", default=512, show_default=True, type=int,
              help="Calibration samples used (the first N of CALIB).")
@click.option("--rmpe-granularity", type=click.Choice(["neuron", "channel"]), default="neuron",
              show_default=True, help="One initial potential per neuron or per channel.")
@click.option("--rmpe-sweeps", default=1, show_default=True, type=int,
              help="Front-to-back calibration sweeps.")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="ray: run the RMPE calibration's ANN-target pass on a Ray cluster "
                   "(RAY_ADDRESS, else a local one); needs onnx-rmpe[ray].")
@runtime_options
@json_option
def calibrate_cmd(model: Path, qcfs: Path, calib: Path, output: Path | None, calib_samples: int,
                  rmpe_granularity: str, rmpe_sweeps: int, engine: str,
                  runtime: RuntimeOptions, json_path: Path | None) -> None:
    """RMPE-calibrate the SNN MODEL against its QCFS ANN on CALIB data."""
    from onnx_rmpe.calibration import calibrate

    output = output or model.with_name(model.name.removesuffix(".onnx") + ".calibrated.onnx")
    guard_outputs({"output": output, "json_path": json_path},
                  {"model": model, "qcfs": qcfs, "calib": calib})
    result = calibrate(model, qcfs, calib, output=output, samples=calib_samples,
                       granularity=rmpe_granularity, sweeps=rmpe_sweeps, runtime=runtime,
                       engine=engine, progress=not quiet())
    if not quiet():
        print_calibration(result)
    click.echo(f"wrote SNN {result.output_path}")
    write_json(json_path, result.as_dict(), written=(result.output_path,))
