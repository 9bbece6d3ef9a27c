"""The ``onnx-rmpe`` command group: logging levels, user errors without tracebacks."""

from __future__ import annotations

import logging
import sys
import time

import click

from onnx_rmpe import __version__
from onnx_rmpe.errors import ConversionError
from onnx_rmpe.logs import quiet_dependencies


class RmpeGroup(click.Group):
    """Runs a command; a user error prints one message and exits 1, no traceback."""

    def invoke(self, ctx: click.Context):
        start = time.perf_counter()
        try:
            result = super().invoke(ctx)
        except ConversionError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            click.echo(f"FAILED | Runtime: {time.perf_counter() - start:.1f}s", err=True)
            sys.exit(1)
        if ctx.invoked_subcommand:
            click.echo(f"PASSED | Runtime: {time.perf_counter() - start:.1f}s")
        return result


@click.group(cls=RmpeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(__version__, prog_name="onnx-rmpe")
def cli(verbose: int, quiet: bool) -> None:
    """Convert ONNX ReLU networks into ultra-low-latency spiking networks (QCFS + RMPE)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    if verbose == 0 and not quiet:
        logging.getLogger("onnx_rmpe").setLevel(logging.WARNING)
    quiet_dependencies(verbose > 0)


def _register() -> None:
    from onnx_rmpe.cli.calibrate import calibrate_cmd
    from onnx_rmpe.cli.convert import convert_cmd
    from onnx_rmpe.cli.demo import demo_cmd
    from onnx_rmpe.cli.evaluate import evaluate_cmd
    from onnx_rmpe.cli.inspect import inspect_cmd

    for cmd in (convert_cmd, calibrate_cmd, evaluate_cmd, inspect_cmd, demo_cmd):
        cli.add_command(cmd)
    try:
        from onnx_rmpe.cli.finetune import finetune_cmd
    except ImportError:  # pragma: no cover - the finetune command ships with the package
        return
    cli.add_command(finetune_cmd)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
