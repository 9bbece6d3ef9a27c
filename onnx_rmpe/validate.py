"""Validation of option values at the API's edge.

Every public job checks its options here before any work, so a bad value is one
:class:`~onnx_rmpe.errors.OptionError` naming the parameter (the CLI shows its flag), not
a TypeError or an onnxruntime failure minutes later.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from onnx_rmpe.errors import OptionError

#: Longest SNN the converter builds; beyond it the memory estimate refuses anyway.
MAX_T = 4096


def integer(name: str, value, *, minimum: int | None = None, maximum: int | None = None,
            optional: bool = False) -> int | None:
    """``value`` as an int in ``[minimum, maximum]``; bools, floats and strings refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(name, f"expected an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise OptionError(name, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise OptionError(name, f"must be at most {maximum}, got {value}")
    return value


def number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: bool = False, optional: bool = False) -> float | None:
    """``value`` as a finite float in range (``exclusive_minimum``: ``value > minimum``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(name, f"expected a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise OptionError(name, f"must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        bound = "greater than" if exclusive_minimum else "at least"
        raise OptionError(name, f"must be {bound} {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise OptionError(name, f"must be at most {maximum:g}, got {value:g}")
    return value


def choice(name: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise OptionError(name, f"{value!r} is not one of {', '.join(choices)}")
    return value


def time_steps(name: str, value) -> int:
    return integer(name, value, minimum=1, maximum=MAX_T)


def threads(value) -> int | None:
    """onnxruntime intra-op threads: ``None`` (onnxruntime's choice) or at least 1."""
    return integer("threads", value, minimum=1, optional=True)


def batch_size(value, name: str = "batch_size") -> int:
    return integer(name, value, minimum=1)


def samples(name: str, value) -> int | None:
    return integer(name, value, minimum=1, optional=True)
