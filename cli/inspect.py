"""``onnx-rmpe inspect``: what a model is and whether it converts."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import guard_outputs, json_option, model_argument, write_json


@click.command("inspect")
@model_argument
@json_option
def inspect_cmd(model: Path, json_path: Path | None) -> None:
    """Describe MODEL: ANN, QCFS or SNN, inputs, outputs, neurons, blockers; or a .nir file."""
    from onnx_rmpe.inspect import inspect_model

    guard_outputs({"json_path": json_path}, {"model": model})
    if model.suffix.lower() == ".nir":
        _inspect_nir(model, json_path)
        return

    info = inspect_model(model)
    click.echo(f"{info.path}: {info.kind.upper()}, opset {info.opset}, IR {info.ir_version}")
    for name, dims in info.inputs:
        click.echo(f"  input  {name} {dims}")
    for name, dims in info.outputs:
        click.echo(f"  output {name} {dims}")
    if info.kind.startswith("snn"):
        meta = info.metadata
        click.echo(f"  T={meta.get('onnx_rmpe.T', '?')} L={meta.get('onnx_rmpe.levels', '?')} "
                   f"RMPE={meta.get('onnx_rmpe.rmpe', '?')}")
    label = {"snn": "spiking layers", "qcfs": "QCFS layers", "ann": "convertible activations",
             "snn-streaming": "state inputs (one step per call; defaults = initial state)",
             "snn-chunked": "state inputs (k steps per call; defaults = initial state)",
             "snn-unrolled": "spiking layers (listed in the multi-step form)"}
    click.echo(f"  {label[info.kind]}: {len(info.layers)}")
    for layer in info.layers:
        extra = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in layer.items() if k not in ("node", "op") and v is not None)
        click.echo(f"    {layer['node']} ({layer['op']}) {extra}")
    if info.macs is not None:
        click.echo(f"  MACs per sample (linear layers, dense): {info.macs:,}")
    if info.calibration:
        click.echo("  RMPE calibration (recorded by convert/calibrate):")
        click.echo(f"    {'layer':<24} {'neurons':>8} {'|E[a]-E[r]| before':>19} "
                   f"{'after':>8} {'firing rate':>12} {'mean |v_init|':>14}")
        for la in info.calibration:
            click.echo(f"    {la['name']:<24} {la['neurons']:>8} {la['error_before']:>19.4f} "
                       f"{la['error_after']:>8.4f} {la['firing_rate']:>12.3f} "
                       f"{la['mean_abs_v_init']:>14.4f}")
    if info.blockers:
        click.echo(f"  blocks conversion: {len(info.blockers)} node(s)")
        for blocker in info.blockers:
            click.echo(f"    {blocker}")
    elif info.kind == "ann":
        click.echo("  convertible: yes")
    write_json(json_path, info.as_dict())


def _inspect_nir(path: Path, json_path: Path | None) -> None:
    from onnx_rmpe.nir import describe_nir

    info = describe_nir(path)
    click.echo(f"{info.path}: NIR graph (nir {info.version}), {len(info.nodes)} nodes, "
               f"{len(info.edges)} edges")
    meta = info.metadata
    if meta:
        click.echo("  " + ", ".join(f"{k}={meta[k]}" for k in ("T", "reset", "readout")
                                    if k in meta))
    click.echo("  nodes:")
    for name, kind, shape in info.nodes:
        click.echo(f"    {name} ({kind}) {shape}")
    click.echo("  edges:")
    for src, dst in info.edges:
        click.echo(f"    {src} -> {dst}")
    write_json(json_path, info.as_dict())
