"""Tables printed by the commands (rich)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_calibration(calibration) -> None:
    table = Table(title=f"RMPE calibration, T={calibration.T}, {calibration.samples} samples, "
                        f"{calibration.provider}, {calibration.seconds:.1f}s")
    for col in ("layer", "neurons", escape("|E[a]-E[r]| before"), "after", "firing rate",
                "mean |v_init|"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for layer in calibration.layers:
        table.add_row(layer.name, str(layer.neurons), f"{layer.error_before:.4f}",
                      f"{layer.error_after:.4f}", f"{layer.firing_rate:.3f}",
                      f"{layer.mean_abs_v_init:.4f}")
    console = Console(width=120)
    console.print(table)
    check = calibration.check
    if check:
        verdict = "kept" if calibration.accepted else "REJECTED (previous potentials kept)"
        z = "n/a" if check.get("z") is None else f"{check['z']:+.1f}"
        click.echo(f"check on the calibration data: output error to the ANN "
                   f"{check['before']:.4g} -> {check['after']:.4g} (change {z} standard "
                   f"errors), top-1 agreement with the {check['agreement_with']} "
                   f"{check['agreement_before']:.4f} -> {check['agreement_after']:.4f}: "
                   f"calibration {verdict}")


def print_accuracy(result) -> None:
    if not result.accuracy_per_step:
        Console().print(f"{result.kind.upper()} accuracy: {result.accuracy:.4f} "
                        f"({result.samples} samples, {result.provider})")
        return
    table = Table(title=f"SNN accuracy by time step ({result.samples} samples, "
                        f"{result.provider})", min_width=72)
    table.add_column("step t", justify="right")
    table.add_column("accuracy", justify="right")
    for t, acc in zip(result.steps, result.accuracy_per_step):
        table.add_row(str(t), f"{acc:.4f}")
    Console(width=120).print(table)
