"""Options of QCFS fine-tuning (:func:`onnx_rmpe.finetune.finetune`), checked without torch.

The defaults: SGD with momentum 0.9, learning rate 0.01, cosine decay to 0 over all steps,
batch 128. Measured (benchmarks/finetune_fashion.py, 1 epoch on 10k Fashion-MNIST images,
L=4): 1.0 point of QCFS accuracy better than the previous Adam recipe on the ground-truth
VGG-like net; on a smaller net with a much worse post-training start Adam did better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_rmpe.errors import OptionError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "onecycle", "constant")
DEFAULT_LR = {"sgd": 1e-2, "adam": 1e-3}
DEFAULT_EPOCHS = 3
DEFAULT_LEVELS = 4
SHIFT = 2


@dataclass(frozen=True)
class Recipe:
    """How to train: validated by :meth:`check`; ``lr=None`` takes the optimizer's default."""

    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    batch_size: int = 128
    distill: float | None = None
    temperature: float = 1.0
    augment: bool = False

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)

    def check(self) -> None:
        """Raise :class:`OptionError` naming the first option that cannot work."""
        if self.optimizer not in OPTIMIZERS:
            raise OptionError("optimizer", f"'{self.optimizer}' is not one of "
                                             f"{', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise OptionError("schedule", f"'{self.schedule}' is not one of "
                                            f"{', '.join(SCHEDULES)}")
        if self.lr is not None and not (np.isfinite(self.lr) and self.lr > 0):
            raise OptionError("lr", f"must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise OptionError("momentum", f"must be in [0, 1), got {self.momentum}")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise OptionError("weight_decay", f"must be at least 0, got {self.weight_decay}")
        if self.batch_size < 1:
            raise OptionError("batch_size", f"must be at least 1, got {self.batch_size}")
        if self.distill is not None and not 0 <= self.distill <= 1:
            raise OptionError("distill", f"is the weight of the distillation loss and must "
                                           f"be in [0, 1], got {self.distill}")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise OptionError("temperature", f"must be positive, got {self.temperature}")


#: Keywords of :func:`onnx_rmpe.finetune.finetune` that ``convert(finetune_options=...)``
#: passes on (the recipe's fields and the run's own settings).
FINETUNE_OPTIONS = (*Recipe.__dataclass_fields__, "epochs", "val", "seed", "maxpool_to_avgpool")


def check_finetune_options(options: dict, *, batch_name: str = "batch_size") -> None:
    """Refuse unknown keys and recipe values that cannot work, before any training.

    ``batch_name`` is the name the caller gives the training batch size (``convert`` calls
    it ``train_batch_size``, its ``batch_size`` being onnxruntime's).
    """
    unknown = sorted(set(options) - set(FINETUNE_OPTIONS))
    if unknown:
        raise OptionError("finetune_options", f"unknown fine-tuning option(s) "
                                              f"{', '.join(unknown)}; known: "
                                              f"{', '.join(FINETUNE_OPTIONS)}")
    fields = {k: v for k, v in options.items() if k in Recipe.__dataclass_fields__}
    try:
        Recipe(**fields).check()
    except OptionError as exc:
        if exc.option == "batch_size" and batch_name != "batch_size":
            raise OptionError(batch_name, exc.reason) from None
        raise


def check_augmentable(recipe: Recipe, x: np.ndarray) -> None:
    if recipe.augment and (x.ndim != 4 or min(x.shape[2:]) <= 2 * SHIFT):
        raise OptionError("augment", f"shifts images [N, C, H, W] larger than "
                                       f"{2 * SHIFT}x{2 * SHIFT}; the data has shape "
                                       f"{tuple(x.shape)}: drop --augment")


__all__ = ["DEFAULT_EPOCHS", "DEFAULT_LEVELS", "DEFAULT_LR", "FINETUNE_OPTIONS", "OPTIMIZERS",
           "Recipe",
           "SCHEDULES", "SHIFT", "check_augmentable", "check_finetune_options"]
