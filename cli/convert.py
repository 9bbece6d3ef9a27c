"""``onnx-rmpe convert``: ANN (ONNX) to SNN (ONNX)."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import json_option, model_argument, runtime_options, write_json
from onnx_rmpe.cli.report import print_calibration


@click.command("convert")
@model_argument
@click.option("--T", "T", required=True, type=int, help="Time steps of the SNN (e.g. 4).")
@click.option("--calib", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration inputs: .npz with array x (model layout), or .npy.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output SNN model [default: MODEL.snn.onnx beside the input].")
@click.option("--levels", "-L", default=8, show_default=True, type=int,
              help="QCFS quantization levels L for ReLU layers.")
@click.option("--percentile", default=99.9, show_default=True, type=float,
              help="Percentile of positive pre-activations used as QCFS threshold.")
@click.option("--calib-samples", default=512, show_default=True, type=int,
              help="Calibration samples used (thresholds and RMPE).")
@click.option("--rmpe/--no-rmpe", default=True, show_default=True,
              help="Layer-by-layer residual membrane potential calibration.")
@click.option("--rmpe-granularity", type=click.Choice(["neuron", "channel"]), default="neuron",
              show_default=True, help="One initial potential per neuron or per channel.")
@click.option("--rmpe-sweeps", default=1, show_default=True, type=int,
              help="Front-to-back calibration sweeps.")
@click.option("--mode", type=click.Choice(["multistep", "streaming"]), default="multistep",
              show_default=True, help="All T steps per call, or one step per call with the "
                                      "membrane potentials as state inputs/outputs.")
@click.option("--finetune-data", type=click.Path(dir_okay=False, path_type=Path),
              help="Training data (.npz with x, optional y): run QCFS fine-tuning first "
                   "(stage 1, needs onnx-rmpe[torch]).")
@click.option("--epochs", default=3, show_default=True, type=int,
              help="Fine-tuning epochs (with --finetune-data).")
@click.option("--lr", default=None, type=float,
              help="Fine-tuning peak learning rate (with --finetune-data) [default: 0.01].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--save-qcfs", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the QCFS ANN (a valid ONNX model of its own).")
@runtime_options
@json_option
def convert_cmd(model: Path, T: int, calib: Path | None, output: Path | None, levels: int,
                percentile: float, calib_samples: int, rmpe: bool, rmpe_granularity: str,
                rmpe_sweeps: int, mode: str, finetune_data: Path | None, epochs: int,
                lr: float | None, seed: int, save_qcfs: Path | None, batch_size: int,
                threads: int | None, device: str, json_path: Path | None) -> None:
    """Convert MODEL (an ONNX ReLU or QCFS network) into an IF-neuron SNN for T steps."""
    from onnx_rmpe.convert import convert

    output = output or model.with_name(model.name.removesuffix(".onnx") + ".snn.onnx")
    result = convert(model, T=T, calib=calib, output=output, levels=levels,
                     percentile=percentile, calib_samples=calib_samples, batch_size=batch_size,
                     rmpe=rmpe, rmpe_granularity=rmpe_granularity, rmpe_sweeps=rmpe_sweeps,
                     mode=mode, finetune_data=finetune_data, epochs=epochs, finetune_lr=lr,
                     seed=seed, save_qcfs=save_qcfs, threads=threads, device=device, progress=True)
    click.echo(f"converted {model}: {len(result.thresholds)} spiking layer(s), T={T}, "
               f"L={result.levels}, RMPE {'on' if result.calibration else 'off'}, {mode}")
    if result.calibration is not None:
        print_calibration(result.calibration)
    if result.qcfs_path:
        click.echo(f"wrote QCFS ANN {result.qcfs_path}")
    click.echo(f"wrote SNN {result.output_path}")
    write_json(json_path, {"T": T, "levels": result.levels, "thresholds": result.thresholds,
                           "output": str(result.output_path),
                           "calibration": result.calibration.as_dict()
                           if result.calibration else None})
