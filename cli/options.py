"""Option groups shared by the commands, and small output helpers."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from onnx_rmpe.errors import OptionError
from onnx_rmpe.logs import quiet_dependencies
from onnx_rmpe.outputs import check_outputs, remove_quietly, write_text
from onnx_rmpe.passes.base import CHECK_ENV
from onnx_rmpe.runtime.memory import parse_size
from onnx_rmpe.runtime.options import RuntimeOptions


def _count_verbose(ctx: click.Context, param, value):
    root = ctx.find_root()
    root.meta["onnx_rmpe.verbose"] = root.meta.get("onnx_rmpe.verbose", 0) + (value or 0)
    set_log_level(ctx)


def _set_quiet(ctx: click.Context, param, value):
    if value:
        ctx.find_root().meta["onnx_rmpe.quiet"] = True
    set_log_level(ctx)


def _set_debug(ctx: click.Context, param, value):
    if value:
        ctx.find_root().meta["onnx_rmpe.debug"] = True
        os.environ[CHECK_ENV] = "1"  # every pass checks its invariants (passes/base.py)
    set_log_level(ctx)


def debug() -> bool:
    """Whether --debug was given (before or after the command name)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().meta.get("onnx_rmpe.debug"))


def log_options(fn):
    """-v/--verbose (count), -q/--quiet and --debug; accepted before and after the command
    name."""
    fn = click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug,
                      help="For bug reports: debug logs (also from onnx-graphsurgeon and "
                           "onnxruntime), every graph pass checks its invariants, and "
                           "errors show their traceback.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                      help="Only results, warnings and errors: no progress bars, no "
                           "tables.")(fn)
    fn = click.option("-v", "--verbose", count=True, expose_value=False,
                      callback=_count_verbose,
                      help="More log output (-vv for debug, with third-party logs).")(fn)
    return fn


def set_log_level(ctx: click.Context) -> None:
    """onnx-rmpe's loggers at WARNING by default, INFO with -v, DEBUG with -vv; -q: WARNING
    and no progress bars or tables."""
    meta = ctx.find_root().meta
    verbose, quiet = meta.get("onnx_rmpe.verbose", 0), meta.get("onnx_rmpe.quiet", False)
    if meta.get("onnx_rmpe.debug"):
        verbose, quiet = max(verbose, 2), False
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    if quiet:
        level = logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    logging.getLogger("onnx_rmpe").setLevel(level)
    quiet_dependencies(verbose > 0)
    if verbose > 1:
        logging.getLogger().setLevel(logging.DEBUG)


def quiet() -> bool:
    """Whether -q was given (before or after the command name)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().meta.get("onnx_rmpe.quiet"))


def _size(ctx, param, value):
    if value is None:
        return None
    size = parse_size(value)
    if size is None or size <= 0:
        raise OptionError("max_memory", f"expected a size such as 4G or 512M, got '{value}'")
    return size


def runtime_options(fn):
    """--device, --threads, --batch-size, --max-memory, given to the command as one
    ``runtime`` (:class:`~onnx_rmpe.runtime.options.RuntimeOptions`) argument."""

    inner = fn

    @functools.wraps(inner)
    def with_runtime(*args, device: str, threads: int | None, batch_size: int,
                     max_memory: int | None, **kwargs):
        runtime = RuntimeOptions(device=device, threads=threads, batch_size=batch_size,
                                 max_memory=max_memory)
        return inner(*args, runtime=runtime, **kwargs)

    fn = with_runtime
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
