"""``onnx-rmpe convert``: ANN (ONNX) to SNN (ONNX)."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.finetune_options import echo_finetune, finetune_options
from onnx_rmpe.cli.options import (
    guard_outputs,
    json_option,
    model_argument,
    quiet,
    runtime_options,
    write_json,
)
from onnx_rmpe.cli.report import print_calibration, print_snn_report
from onnx_rmpe.runtime.options import RuntimeOptions


@click.command("convert")
@model_argument
@click.option("--T", "T", required=True, type=int, help="Time steps of the SNN (e.g. 4).")
@click.option("--calib", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration inputs: .npz with array x (model layout), or .npy.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output SNN model [default: MODEL.snn.onnx beside the input].")
@click.option("--levels", "-L", default=None, type=int,
              help="QCFS quantization levels L for ReLU layers [default: 8; a fine-tuned "
                   "QCFS model keeps its own L].")
@click.option("--percentile", default=99.9, show_default=True, type=float,
              help="Percentile of positive pre-activations used as QCFS threshold.")
@click.option("--thresholds", type=click.Choice(["refine", "search", "percentile"]),
              default="refine", show_default=True,
              help="QCFS thresholds of ReLU layers: chosen per layer for T (search, from the "
                   "percentile start), then refined by the output error (refine), or the "
                   "percentile.")
@click.option("--per-channel/--per-layer", default=None,
              help="QCFS thresholds per channel where the layers around an activation allow "
                   "it (DenseNet, MobileNet), or one per layer [default: both, the SNN with "
                   "the smaller output error on the calibration data kept].")
@click.option("--reconstruct", type=click.Choice(["auto", "none", "weights", "bias"]),
              default="auto", show_default=True,
              help="Refit the SNN's linear layers to the ReLU ANN on the calibration data "
                   "before RMPE: weights and biases (closed-form ridge fit) or biases only; "
                   "auto: weights wherever --thresholds refine runs (T <= 8).")
@click.option("--calib-samples", default=512, show_default=True, type=int,
              help="Calibration samples used (thresholds and RMPE).")
@click.option("--rmpe/--no-rmpe", default=True, show_default=True,
              help="Layer-by-layer residual membrane potential calibration.")
@click.option("--rmpe-granularity", type=click.Choice(["neuron", "channel"]), default="neuron",
              show_default=True, help="One initial potential per neuron or per channel.")
@click.option("--rmpe-sweeps", default=1, show_default=True, type=int,
              help="Front-to-back calibration sweeps.")
@click.option("--mode", type=click.Choice(["multistep", "streaming", "chunked", "unrolled"]),
              default="multistep", show_default=True,
              help="All T steps per call; one step per call with the membrane potentials as "
                   "state inputs/outputs; --chunk K steps per call with the state carried; or "
                   "all T steps per call with the network written out step after step.")
@click.option("--chunk", type=int, default=None,
              help="Steps per call of --mode chunked (must divide T) [default: the largest "
                   "that fits --max-memory at --batch-size].")
@click.option("--finetune-data", type=click.Path(dir_okay=False, path_type=Path),
              help="Training data (.npz with x, optional y): run QCFS fine-tuning first "
                   "(stage 1, needs onnx-rmpe[torch]; the options below are those of "
                   "`onnx-rmpe finetune`, with --train-batch-size for its --batch-size).")
@finetune_options("--train-batch-size")
@click.option("--save-qcfs", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the QCFS ANN (a valid ONNX model of its own) and, when RMPE "
                   "calibrates against a finer ANN (T > L), that target as PATH.target.onnx.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the SNN report (firing rates, SynOps, energy, plots) on the "
                   "calibration data into this folder.")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="ray: run the RMPE calibration's ANN-target pass on a Ray cluster "
                   "(RAY_ADDRESS, else a local one); needs onnx-rmpe[ray].")
@runtime_options
@json_option
def convert_cmd(model: Path, T: int, calib: Path | None, output: Path | None, levels: int | None,
                percentile: float, calib_samples: int, rmpe: bool, rmpe_granularity: str,
                rmpe_sweeps: int, mode: str, chunk: int | None,
                finetune_data: Path | None, finetune_options: dict,
                save_qcfs: Path | None, report_dir: Path | None,
                runtime: RuntimeOptions, json_path: Path | None,
                thresholds: str = "refine", per_channel: bool | None = None,
                reconstruct: str = "auto", engine: str = "local") -> None:
    """Convert MODEL (an ONNX ReLU or QCFS network) into an IF-neuron SNN for T steps."""
    from onnx_rmpe.conversion import convert, target_path_for

    output = output or model.with_name(model.name.removesuffix(".onnx") + ".snn.onnx")
    guard_outputs({"output": output, "save_qcfs": save_qcfs, "json_path": json_path,
                   "save_qcfs (target)":
                       None if save_qcfs is None else target_path_for(save_qcfs)},
                  {"model": model, "calib": calib, "finetune_data": finetune_data,
                   "val": finetune_options.get("val")})
    result = convert(model, T=T, calib=calib, output=output, levels=levels,
                     percentile=percentile, calib_samples=calib_samples, runtime=runtime,
                     rmpe=rmpe, rmpe_granularity=rmpe_granularity, rmpe_sweeps=rmpe_sweeps,
                     mode=mode, chunk=chunk, finetune_data=finetune_data,
                     finetune_options=finetune_options, save_qcfs=save_qcfs,
                     progress=not quiet(),
                     report_dir=report_dir, thresholds=thresholds,
                     per_channel="auto" if per_channel is None else per_channel,
                     reconstruct=reconstruct, engine=engine)
    if result.finetune is not None:
        echo_finetune(result.finetune)
    click.echo(f"converted {model}: {len(result.thresholds)} spiking layer(s), T={T}, "
               f"L={result.levels}, RMPE {'on' if result.calibration else 'off'}, {mode}")
    if result.per_channel is not None and result.per_channel.errors:
        errors = result.per_channel.errors
        noise = " (per layer lower, but within the calibration data's noise)" \
            if result.per_channel.reason == "within noise" else ""
        click.echo(f"thresholds per {result.per_channel.chosen}: output error on the "
                   f"calibration data {errors['channel']:.4g} per channel, "
                   f"{errors['layer']:.4g} per layer{noise}")
    elif result.per_channel is not None and result.per_channel.reason == "not compared":
        click.echo("thresholds per channel (not compared with per layer: the thresholds were "
                   "not refined here; --per-layer forces one per layer)")
    if result.potential_refine is not None and result.potential_refine.scales:
        p = result.potential_refine
        click.echo(f"RMPE potentials weighed by the output error: {len(p.scales)} layer(s) "
                   f"x 1/2 or 0, output error {p.error_start:.4g} -> {p.error_end:.4g}")
    if result.readout_activations:
        click.echo(f"ReLU on the output ({', '.join(result.readout_activations)}): applied to "
                   "the time-averaged outputs (readout), not a spiking layer")
    if result.calibration is not None:
        if not quiet():
            print_calibration(result.calibration)
    if result.qcfs_path:
        click.echo(f"wrote QCFS ANN (L={result.levels}, the SNN's thresholds) {result.qcfs_path}")
    if result.target_path:
        click.echo(f"wrote RMPE target ANN (the ANN the SNN was calibrated against) "
                   f"{result.target_path}")
    click.echo(f"wrote SNN {result.output_path}")
    if result.report is not None and not quiet():
        print_snn_report(result.report)
    write_json(json_path, {"T": T, "levels": result.levels, "thresholds": result.thresholds,
                           "output": str(result.output_path),
                           "per_channel": result.per_channel.as_dict()
                           if result.per_channel else None,
                           "potential_scales": result.potential_refine.scales
                           if result.potential_refine else None,
                           "calibration": result.calibration.as_dict()
                           if result.calibration else None},
               written=(result.output_path, result.qcfs_path, result.target_path))
