"""Per-channel or per-layer QCFS thresholds: the label-free choice of ``per_channel="auto"``.

Per-channel thresholds (:mod:`onnx_rmpe.passes.equalize_channels`) lift nets whose channels
have very different ranges (MobileNet-like: +19 points at T=4) and cost a little on nets
whose channels are even (VGG-/ResNet-like: -0.7 / -1.4 points at T=4). Neither is right for
every net, and the test accuracy is not known at conversion time. ``auto`` converts both
ways and keeps the SNN whose time-averaged first output is closer to the ReLU ANN's on the
calibration data,

    E = mean over samples and output elements of (y_SNN - y_ANN)^2

(the error :mod:`onnx_rmpe.refine` minimizes; the final one, after RMPE, the second
refinement and the potential step, when those ran). Per layer wins only when its error is
below the per-channel one by more than the relative ``TIE`` (the refinement's), so float
rounding (batch size, machine) does not flip a near-tie, *and* by more than ``NOISE``
standard errors of the paired per-sample difference ``d_i = E_layer,i - E_channel,i`` on
the calibration samples: a difference the calibration set's sampling could make is not a
reason to leave per channel, the measured safer default (BENCHMARKS.md: the two wrong
choices on the Fashion-MNIST nets were 1.1 % and 4 % apart). Per channel keeps the tie
(``reason`` ``tie`` or ``within noise``).

Where per channel is impossible (no activation's neighbours can absorb a channel scale:
the QCFS ANN's ``onnx_rmpe.thresholds_per`` is ``layer``) the first conversion already is
the per-layer one and the second is skipped. The second conversion also runs only where
the first one refined its thresholds (post-training thresholds, ``T <= refine.MAX_T`` and
the work under ``refine.MAX_MACS``): elsewhere (``T > 8``, trained thresholds, ImageNet-size
models) the choice would double a conversion that is already the long part of the job, so
per channel, the measured safer default (+19 points on a MobileNet-like net, -0.7 / -1.4 on
VGG-/ResNet-like ones), is kept with the reason ``not compared``. Cost: two conversions
instead of one where both run (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from onnx_rmpe.errors import OptionError
from onnx_rmpe.refine import TIE

logger = logging.getLogger(__name__)

#: Accepted values of ``convert(per_channel=...)``.
CHOICES = (True, False, "auto")
#: Per layer must beat per channel by this many standard errors of the paired per-sample
#: difference of their output errors on the calibration data.
NOISE = 2.0
#: Metadata key of the SNN that records the choice (JSON of :meth:`ChannelChoice.as_dict`).
METADATA_KEY = "onnx_rmpe.per_channel_choice"

C = TypeVar("C")


@dataclass
class ChannelChoice:
    """Which thresholds the SNN has (``channel`` or ``layer``) and why.

    ``errors``: final output error on the calibration data of each conversion that ran
    (``auto`` only; empty when forced); ``reason``: ``forced``, ``smaller output error``,
    ``tie``, ``within noise``, ``no layer can be rescaled`` or ``not compared``."""

    chosen: str
    reason: str
    errors: dict[str, float] = field(default_factory=dict)
    #: ``auto``: each conversion's output errors at its refinements (start and end of each),
    #: to see which earlier stage would have ranked the two the same way.
    stages: dict[str, list[float]] = field(default_factory=dict)
    #: ``auto`` with per-sample errors: mean and standard error of ``E_layer,i - E_channel,i``.
    difference: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"chosen": self.chosen, "reason": self.reason, "output_error": self.errors,
                "refine_errors": self.stages, "difference": self.difference}

    def as_metadata(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


def check_choice(value) -> None:
    if not any(value is c or (isinstance(c, str) and value == c) for c in CHOICES):
        raise OptionError("per_channel", f"{value!r} is not one of True (per channel), False "
                                         "(per layer) or 'auto' (both, the smaller output "
                                         "error on the calibration data kept)")


def choose(build: Callable[[bool], C], scope_of: Callable[[C], str],
           error_of: Callable[[C], float], per_channel: bool | str,
           stages_of: Callable[[C], list[float]] | None = None,
           comparable: Callable[[C], bool] | None = None,
           samples_of: Callable[[C], np.ndarray] | None = None) -> tuple[C, ChannelChoice]:
    """Run ``build(per_channel)`` once (forced) or both ways (``"auto"``) and keep one.

    ``scope_of(candidate)``: ``channel`` if any layer was rescaled, else ``layer``;
    ``error_of(candidate)``: its final output error on the calibration data;
    ``stages_of(candidate)`` (optional): its errors at earlier stages, recorded;
    ``comparable(candidate)`` (optional): whether the second conversion is worth its cost
    (``False``: the per-channel one is kept, reason ``not compared``);
    ``samples_of(candidate)`` (optional): its per-sample output errors on the calibration
    data, for the ``NOISE`` margin.
    """
    check_choice(per_channel)
    if per_channel != "auto":
        built = build(bool(per_channel))
        return built, ChannelChoice(scope_of(built), "forced")
    channel = build(True)
    if scope_of(channel) == "layer":
        logger.info("per-channel thresholds: no layer can be rescaled; one per layer, "
                    "no second conversion")
        return channel, ChannelChoice("layer", "no layer can be rescaled")
    if comparable is not None and not comparable(channel):
        logger.info("per-channel thresholds kept without comparing to per layer: the "
                    "thresholds were not refined (T > 8, trained thresholds or a model above "
                    "onnx_rmpe.refine.MAX_MACS), so a second conversion is not worth its cost")
        return channel, ChannelChoice("channel", "not compared")
    layer = build(False)
    errors = {"channel": error_of(channel), "layer": error_of(layer)}
    stages = {} if stages_of is None else {"channel": stages_of(channel),
                                           "layer": stages_of(layer)}
    difference = {} if samples_of is None else _difference(samples_of(layer),
                                                            samples_of(channel))
    beyond_noise = not difference or difference["mean"] < -NOISE * difference["se"]
    if errors["layer"] < errors["channel"] * (1 - TIE) and beyond_noise:
        chosen, reason, kept = "layer", "smaller output error", layer
    elif errors["layer"] < errors["channel"] * (1 - TIE):
        chosen, reason, kept = "channel", "within noise", channel
    else:
        smaller = errors["channel"] < errors["layer"]
        chosen, reason, kept = "channel", "smaller output error" if smaller else "tie", channel
    logger.info("thresholds per %s (%s): output error on the calibration data %.4g per "
                "channel, %.4g per layer", chosen, reason, errors["channel"], errors["layer"])
    return kept, ChannelChoice(chosen, reason, errors, stages, difference)


def _difference(layer: np.ndarray, channel: np.ndarray) -> dict[str, float]:
    """Mean and standard error of the paired per-sample difference ``layer - channel``."""
    d = np.asarray(layer, np.float64) - np.asarray(channel, np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return {"mean": float(d.mean()), "se": se}


__all__ = ["CHOICES", "METADATA_KEY", "NOISE", "ChannelChoice", "check_choice", "choose"]
