"""``onnx-rmpe inspect``: what a model is and whether it converts."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import json_option, model_argument, write_json


@click.command("inspect")
@model_argument
@json_option
def inspect_cmd(model: Path, json_path: Path | None) -> None:
    """Describe MODEL: ANN, QCFS or SNN, inputs, outputs, neurons, blockers."""
    from onnx_rmpe.inspect import inspect_model

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
    if info.blockers:
        click.echo(f"  blocks conversion: {len(info.blockers)} node(s)")
        for blocker in info.blockers:
            click.echo(f"    {blocker}")
    elif info.kind == "ann":
        click.echo("  convertible: yes")
    write_json(json_path, info.as_dict())
