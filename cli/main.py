"""The ``onnx-rmpe`` command group: logging levels, user errors without tracebacks."""

from __future__ import annotations

import signal
import sys
import time
import traceback

import click

from onnx_rmpe.cli.options import debug, log_options, set_log_level
from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.outputs import remove_stale_work_dirs
from onnx_rmpe.version import __version__

#: API parameter names whose CLI option has another name.
API_TO_CLI = {"finetune_lr": "lr", "finetune_options": "finetune_data",
              "samples": "calib_samples", "granularity": "rmpe_granularity",
              "sweeps": "rmpe_sweeps", "snn": "model", "finetune_data": "finetune_data"}


def _flag(ctx: click.Context, option: str) -> str:
    """The command-line spelling of the API parameter ``option`` in this command."""
    cmd = ctx.command.get_command(ctx, ctx.invoked_subcommand or "") \
        if isinstance(ctx.command, click.Group) else ctx.command
    params = {p.name: p for p in getattr(cmd, "params", [])}
    name, _, detail = option.partition(" ")  # e.g. "save_qcfs (target)"
    param = params.get(name) or params.get(API_TO_CLI.get(name, ""))
    if param is None:
        return option
    flag = param.human_readable_name if isinstance(param, click.Argument) \
        else max(param.opts, key=len)
    return f"{flag} {detail}".rstrip()


def _message(ctx: click.Context, exc: ConversionError) -> str:
    if isinstance(exc, OptionError):
        return f"option {_flag(ctx, exc.option)}: {exc.reason}"
    return str(exc)


def _terminate(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """SIGTERM unwinds like Ctrl-C, so temporary files and folders are removed."""
    raise KeyboardInterrupt


class RmpeGroup(click.Group):
    """Runs a command; a user error prints one message and exits 1, no traceback.

    Usage errors found by click (an unknown option, a value that is not a number) are user
    errors too: one ``error:`` line naming the option and exit code 1, like the errors the
    library finds (with ``--debug``, after its traceback). ``-v``/``-q``/``--debug`` work
    before and after the command name.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.secho(f"error: {exc.format_message()}{hint}", fg="red", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv

    def invoke(self, ctx: click.Context):
        start = time.perf_counter()
        remove_stale_work_dirs()
        try:
            result = super().invoke(ctx)
        except ConversionError as exc:
            if debug():
                traceback.print_exc()
            click.secho(f"error: {_message(ctx, exc)}", fg="red", err=True)
            click.echo(f"FAILED | Runtime: {time.perf_counter() - start:.1f}s", err=True)
            sys.exit(1)
        if ctx.invoked_subcommand:
            click.echo(f"PASSED | Runtime: {time.perf_counter() - start:.1f}s")
        return result


@click.group(cls=RmpeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@log_options
@click.version_option(__version__, prog_name="onnx-rmpe")
def cli() -> None:
    """Convert ONNX ReLU networks into ultra-low-latency spiking networks (QCFS + RMPE)."""
    set_log_level(click.get_current_context())


def _register() -> None:
    from onnx_rmpe.cli.calibrate import calibrate_cmd
    from onnx_rmpe.cli.convert import convert_cmd
    from onnx_rmpe.cli.demo import demo_cmd
    from onnx_rmpe.cli.evaluate import evaluate_cmd
    from onnx_rmpe.cli.export_nir import export_nir_cmd
    from onnx_rmpe.cli.finetune import finetune_cmd
    from onnx_rmpe.cli.finetune_snn import finetune_snn_cmd
    from onnx_rmpe.cli.inspect import inspect_cmd

    for cmd in (convert_cmd, calibrate_cmd, evaluate_cmd, inspect_cmd, demo_cmd, finetune_cmd,
                export_nir_cmd, finetune_snn_cmd):
        log_options(cmd)  # -v/-q also after the command name
        cli.add_command(cmd)


_register()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli()


if __name__ == "__main__":
    main()
