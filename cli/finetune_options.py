"""The fine-tuning options, written once for ``finetune`` and ``convert --finetune-data``.

Both commands get the same flags, help and defaults (the defaults of
:func:`onnx_rmpe.finetune.finetune`, shown from :class:`onnx_rmpe.recipe.Recipe`). The
command receives one ``finetune_options`` dict holding only the options the user gave, so
the library's defaults apply otherwise, and ``convert`` can refuse fine-tuning options
given without ``--finetune-data`` instead of ignoring them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click
from click.core import ParameterSource

from onnx_rmpe.recipe import DEFAULT_EPOCHS, DEFAULT_LR, OPTIMIZERS, SCHEDULES, Recipe

_R = Recipe()


def _options(batch_flags: tuple[str, ...], batch_dest: str) -> list[tuple[str, click.Option]]:
    """(API keyword, click option) pairs, in help order."""
    return [
        ("epochs", click.Option(["--epochs"], default=DEFAULT_EPOCHS, show_default=True,
                                type=int, help="Fine-tuning epochs.")),
        ("optimizer", click.Option(["--optimizer"], default=_R.optimizer, show_default=True,
                                   type=click.Choice(OPTIMIZERS),
                                   help="Optimizer of the fine-tuning.")),
        ("lr", click.Option(["--lr"], default=None, type=float,
                            help="Peak learning rate of the fine-tuning [default: "
                                 f"{DEFAULT_LR['sgd']} for sgd, {DEFAULT_LR['adam']} for "
                                 "adam].")),
        ("momentum", click.Option(["--momentum"], default=_R.momentum, show_default=True,
                                  type=float, help="SGD momentum.")),
        ("weight_decay", click.Option(["--weight-decay"], default=_R.weight_decay,
                                      show_default=True, type=float,
                                      help="Weight decay (L2) of the optimizer.")),
        ("schedule", click.Option(["--schedule"], default=_R.schedule, show_default=True,
                                  type=click.Choice(SCHEDULES),
                                  help="Learning-rate schedule, stepped per batch.")),
        ("batch_size", click.Option([*batch_flags, batch_dest],
                                    default=_R.batch_size, show_default=True, type=int,
                                    help="Training batch size of the fine-tuning.")),
        ("distill", click.Option(["--distill"], default=None, type=float,
                                 help="Weight in [0, 1] of the loss that matches the input "
                                      "model's logits (1 - it weighs the cross-entropy) "
                                      "[default: 0 with labels, 1 without].")),
        ("temperature", click.Option(["--temperature"], default=_R.temperature,
                                     show_default=True, type=float,
                                     help="Softmax temperature of the distillation loss.")),
        ("augment", click.Option(["--augment"], is_flag=True,
                                 help="Random shifts of up to 2 pixels (images) while "
                                      "fine-tuning.")),
        ("val", click.Option(["--val"], default=None,
                             type=click.Path(exists=True, dir_okay=False, path_type=Path),
                             help="Held-out data (.npz with 'x', 'y') for the accuracy "
                                  "after each fine-tuning epoch.")),
        ("seed", click.Option(["--seed"], default=0, show_default=True, type=int,
                              help="Seed of the fine-tuning's shuffling and "
                                   "initialisation.")),
        ("maxpool_to_avgpool", click.Option(["--maxpool-to-avgpool"], is_flag=True,
                                            help="Replace max pools by average pools before "
                                                 "fine-tuning (max pools convert exactly, "
                                                 "so off by default).")),
    ]


def finetune_options(*batch_flags: str, batch_dest: str = "train_batch_size"):
    """Add the shared fine-tuning options; the command gets them as ``finetune_options``.

    ``batch_flags`` spell the training batch size (``convert`` has its own
    ``--batch-size`` for onnxruntime, so there it is ``--train-batch-size`` only);
    ``batch_dest`` is its parameter name, which error messages map back to the flag.
    """
    options = _options(batch_flags or ("--train-batch-size",), batch_dest)

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            ctx = click.get_current_context()
            given = {}
            for key, opt in options:
                value = kwargs.pop(opt.name)
                if ctx.get_parameter_source(opt.name) not in (ParameterSource.DEFAULT, None):
                    given[key] = value
            return fn(*args, finetune_options=given, **kwargs)

        params = wrapper.__dict__.setdefault("__click_params__", [])
        params.extend(opt for _, opt in reversed(options))
        return wrapper

    return decorate


def echo_finetune(result) -> None:
    """The loss used and one line per epoch of a FinetuneResult."""
    from onnx_rmpe.finetune import describe_loss

    click.echo(f"loss: {describe_loss(result.distill)}")
    for h in result.history:
        acc = "" if h.val_accuracy is None else f", held-out accuracy {100 * h.val_accuracy:.2f}%"
        click.echo(f"epoch {h.epoch}: loss {h.loss:.4f}{acc} ({h.seconds:.1f}s)")
    if result.initial_val_accuracy is not None:
        click.echo(f"QCFS accuracy (L={result.levels}): {100 * result.initial_val_accuracy:.2f}% "
                   f"before, {100 * result.val_accuracy:.2f}% after fine-tuning")


__all__ = ["echo_finetune", "finetune_options"]
