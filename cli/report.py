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


def _ops(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def print_snn_report(result) -> None:
    """The report of an SNN: spiking layers, linear layers, and cost/accuracy per step."""
    console = Console(width=120)
    spiking = Table(title=f"Spiking layers ({result.samples} samples, T={result.T})")
    for col in ("layer", "neurons", "firing rate", "silent", "saturated", "spikes/sample"):
        spiking.add_column(col, justify="left" if col == "layer" else "right")
    for la in result.spiking_layers:
        spiking.add_row(escape(la.name), str(la.neurons), f"{la.firing_rate:.3f}",
                        f"{la.silent_fraction:.3f}", f"{la.saturated_fraction:.3f}",
                        _ops(la.spikes_per_sample))
    console.print(spiking)
    linear = Table(title=f"Linear layers per inference (SynOps over T={result.T} steps)")
    for col in ("layer", "op", "input", "ANN MACs", "SNN SynOps", "SynOps/MAC"):
        linear.add_column(col, justify="left" if col in ("layer", "op", "input") else "right")
    for la in result.linear_layers:
        ratio = f"{la.synops / la.macs:.3f}" if la.inputs == "spikes" and la.macs else "-"
        synops = _ops(la.synops) if la.inputs == "spikes" else f"MACs ({la.inputs})"
        linear.add_row(escape(la.name), la.op, la.inputs, _ops(la.macs), synops, ratio)
    linear.add_row("total", "", "", _ops(result.ann_macs), _ops(result.synops_per_step[-1]),
                   f"{result.synops_mac_ratio[-1]:.3f}" if result.ann_macs else "-",
                   style="bold")
    console.print(linear)
    steps = Table(title=f"Accuracy and energy per inference after each step "
                        f"({result.energy_mac_pj} pJ/MAC, {result.energy_ac_pj} pJ/AC)")
    for col in ("step t", "accuracy", "SNN MACs", "SynOps", "SNN energy (nJ)", "SNN/ANN energy"):
        steps.add_column(col, justify="right")
    accs = result.accuracy_per_step or ["-"] * result.T
    for t, acc in enumerate(accs, start=1):
        steps.add_row(str(t), acc if isinstance(acc, str) else f"{acc:.4f}",
                      _ops(result.snn_macs_per_step[t - 1]), _ops(result.synops_per_step[t - 1]),
                      f"{result.snn_energy_pj_per_step[t - 1] / 1e3:.1f}",
                      f"{result.energy_ratio[t - 1]:.3f}")
    for label, acc in (("ANN", result.ann_accuracy), ("QCFS ANN", result.qcfs_accuracy)):
        if acc is not None or label == "ANN":
            steps.add_row(label, "-" if acc is None else f"{acc:.4f}", _ops(result.ann_macs),
                          "-", f"{result.ann_energy_pj / 1e3:.1f}", "1.000", style="dim")
    console.print(steps)
    for path in result.files:
        click.echo(f"wrote {path}")
    if result.note:
        click.echo(f"note: {result.note}")
