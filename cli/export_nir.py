"""``onnx-rmpe export-nir``: write a converted SNN as a NIR graph."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_rmpe.cli.options import json_option, model_argument, write_json


@click.command("export-nir")
@model_argument
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="NIR file to write (default: MODEL with the suffix .nir).")
@json_option
def export_nir_cmd(model: Path, output: Path | None, json_path: Path | None) -> None:
    """Write the multi-step SNN MODEL (from `convert`) as NIR for neuromorphic stacks."""
    from onnx_rmpe.nir import export_nir

    output = output or model.with_suffix(".nir")
    result = export_nir(model, output)
    kinds: dict[str, int] = {}
    for kind in result.nodes.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    click.echo(f"exported {model}: {len(result.if_layers)} IF layer(s), T={result.T}, "
               f"{len(result.nodes)} nodes, {len(result.edges)} edges")
    click.echo("  nodes: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))
    click.echo(f"  initial potentials of {result.initial_potentials} layer(s) as a first-step "
               "current (clock.* neurons)")
    click.echo(f"wrote NIR {result.path}")
    write_json(json_path, vars(result))
