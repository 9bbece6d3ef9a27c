"""Option groups shared by the commands, and small output helpers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnx_rmpe.errors import OptionError


def runtime_options(fn):
    """--device, --threads, --batch-size."""
    fn = click.option("--batch-size", default=128, show_default=True, type=int,
                      help="Samples per onnxruntime run.")(fn)
    fn = click.option("--threads", default=None, type=int,
                      help="onnxruntime intra-op threads (default: onnxruntime's choice).")(fn)
    fn = click.option("--device", default="cpu", show_default=True,
                      type=click.Choice(["cpu", "cuda"]),
                      help="cuda needs onnx-rmpe[gpu]; falls back to cpu with a warning.")(fn)
    return fn


def model_argument(fn):
    return click.argument("model", type=click.Path(dir_okay=False, path_type=Path))(fn)


def json_option(fn):
    return click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help="Also write the figures to this JSON file.")(fn)


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        click.echo(f"wrote {path}")


def parse_steps(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise OptionError("--T", f"expected comma-separated steps like 1,2,4,8, got '{text}'") \
            from None


def report_options(fn):
    """--report DIR, --qcfs, --ann, --energy-mac, --energy-ac."""
    fn = click.option("--energy-ac", default=0.9, show_default=True, type=float,
                      help="Energy of one accumulate (pJ) for the report.")(fn)
    fn = click.option("--energy-mac", default=4.6, show_default=True, type=float,
                      help="Energy of one multiply-accumulate (pJ) for the report.")(fn)
    fn = click.option("--ann", "ann", type=click.Path(dir_okay=False, path_type=Path),
                      help="The ANN, for its accuracy in the report.")(fn)
    fn = click.option("--qcfs", type=click.Path(dir_okay=False, path_type=Path),
                      help="The QCFS ANN, for its accuracy in the report.")(fn)
    fn = click.option("--report", "report_dir", type=click.Path(file_okay=False,
                                                                path_type=Path),
                      help="Write the SNN report (firing rates, SynOps, energy, plots) "
                           "into this folder.")(fn)
    return fn
