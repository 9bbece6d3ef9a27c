"""``onnx-rmpe demo``: the built-in example, end to end."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from onnx_rmpe.cli.report import print_snn_report


@click.command("demo")
@click.option("--out-dir", default="onnx-rmpe-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the models and data files go.")
@click.option("--T", "T", default=4, show_default=True, type=int,
              help="Time steps of the SNN model written to --out-dir.")
@click.option("--levels", "-L", default=8, show_default=True, type=int,
              help="QCFS quantization levels L.")
@click.option("--epochs", default=20, show_default=True, type=int,
              help="Training epochs of the small CNN.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the data split and the training.")
def demo_cmd(out_dir: Path, T: int, levels: int, epochs: int, seed: int) -> None:
    """Train a small CNN on scikit-learn digits, convert it, and compare ANN and SNN."""
    from onnx_rmpe.demo import run_demo

    click.echo("training a small CNN on scikit-learn's digits (1400 train / 397 test)...")
    result = run_demo(out_dir, T=T, levels=levels, epochs=epochs, seed=seed, progress=True)
    console = Console(width=100)
    console.print(f"ANN accuracy:  {result.ann_accuracy:.4f}")
    console.print(f"QCFS accuracy: {result.qcfs_accuracy:.4f} (L={levels}, post-training)")
    table = Table(title="SNN accuracy on the held-out digits")
    for col in ("T", "plain conversion", "with RMPE"):
        table.add_column(col, justify="right")
    for steps, acc in result.rmpe.items():
        table.add_row(str(steps), f"{result.plain[steps]:.4f}", f"{acc:.4f}")
    console.print(table)
    click.echo(f"wrote SNN model (T={T}, RMPE) to {result.snn_path}")
    click.echo(f"report of this SNN on the held-out digits (T={T}):")
    print_snn_report(result.report)
    click.echo(f"try: onnx-rmpe evaluate {result.snn_path} --data {out_dir / 'test.npz'} "
               f"--report {out_dir / 'report'}")
