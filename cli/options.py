"""Option groups shared by the commands, and small output helpers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnx_rmpe.errors import OptionError
from onnx_rmpe.outputs import check_outputs, remove_quietly, write_text
from onnx_rmpe.runtime.memory import parse_size


def _size(ctx, param, value):
    if value is None:
        return None
    size = parse_size(value)
    if size is None or size <= 0:
        raise OptionError("max_memory", f"expected a size such as 4G or 512M, got '{value}'")
    return size


def runtime_options(fn):
    """--device, --threads, --batch-size, --max-memory."""
    fn = click.option("--max-memory", default=None, callback=_size,
                      help="Memory budget (e.g. 4G, 512M); batches shrink to fit it "
                           "[default: half the available memory].")(fn)
    fn = click.option("--batch-size", default=128, show_default=True, type=int,
                      help="Samples per onnxruntime run (at most; see --max-memory).")(fn)
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


def guard_outputs(outputs: dict, inputs: dict) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other."""
    check_outputs(outputs, inputs)


def write_json(path: Path | None, payload: dict, *, written: tuple = ()) -> None:
    """Write the figures atomically; if that fails, remove this run's other outputs too."""
    if path is None:
        return
    try:
        write_text(path, json.dumps(payload, indent=2, default=str) + "\n", name="json_path")
    except BaseException:
        remove_quietly(written)
        raise
    click.echo(f"wrote {path}")


def parse_steps(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise OptionError("steps", f"expected comma-separated steps like 1,2,4,8, got '{text}'") \
            from None
