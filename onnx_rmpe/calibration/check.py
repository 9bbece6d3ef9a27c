"""The final check of RMPE calibration: keep the calibrated SNN unless it moved away from the ANN.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from onnx_rmpe.calibration.results import CalibrationResult, LayerReport
from onnx_rmpe.data import Dataset
from onnx_rmpe.modelio import get_metadata, is_snn
from onnx_rmpe.runtime.session import Device, batches, make_session

logger = logging.getLogger(__name__)


#: The check rejects a calibration only when it moves the SNN's outputs away from the
#: ANN's by more than this many standard errors of the paired per-sample change.
REJECT_Z = 3.0
#: Largest T of an SNN the check runs in its network-unrolled form (as ``evaluate`` does).
UNROLL_MAX_T = 64


def _check(result: CalibrationResult, before: onnx.ModelProto, reference: onnx.ModelProto,
           ds: Dataset, batch_size: int, threads: int | None, device: Device,
           calibrated: np.ndarray | None = None,
           uncalibrated: np.ndarray | None = None) -> onnx.ModelProto:
    """Keep the calibrated SNN unless it is significantly farther from the ANN than before.

    The measure is continuous and paired: per sample ``i``, the change
    ``d_i = |y_after_i - y_ref_i|^2 - |y_before_i - y_ref_i|^2`` of the squared distance of
    the first output to the reference ANN's. The calibration is rejected only when the mean
    change is positive by more than ``REJECT_Z`` standard errors (``std(d) / sqrt(n)``), so
    the decision does not flip on a handful of samples or on float rounding between
    machines: a calibration that is about as good as none is kept (it is the method), one
    that is clearly worse is not. Top-1 agreement with the labels (or with the reference's
    classes) is reported, not decided on: on a few hundred samples it moves in steps of
    ``1/n`` and is too coarse to decide by.

    ``calibrated``: the calibrated SNN's outputs when the sweep already computed them from
    its spike caches (else the calibrated SNN runs here); ``uncalibrated``: the outputs of
    ``before`` when the caller has them (the threshold search computes them from its spike
    caches); else the SNN before calibration runs in its network-unrolled form for T <= 64
    (the same outputs as the multi-step form, faster).
    """
    target = _outputs(_fast_form(reference), ds, batch_size, threads, device)
    classes = ds.y if ds.y is not None else target.argmax(-1)
    outputs = {"before": uncalibrated if uncalibrated is not None else
               _outputs(_fast_form(before), ds, batch_size, threads, device),
               "after": calibrated if calibrated is not None else
               _outputs(_fast_form(result.snn), ds, batch_size, threads, device)}
    sq = {name: ((out - target).astype(np.float64) ** 2).reshape(len(out), -1).sum(1)
          for name, out in outputs.items()}
    mse = {name: float(v.mean() / max(1, target[0].size)) for name, v in sq.items()}
    diff = sq["after"] - sq["before"]
    stderr = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    z = float(diff.mean() / stderr) if stderr > 0 else (np.inf if diff.mean() > 0 else 0.0)
    agree = {name: float((out.argmax(-1) == classes).mean()) for name, out in outputs.items()}
    result.accepted = not z > REJECT_Z
    result.check = {"metric": "mean squared error to the ANN outputs", **mse,
                    "z": z if np.isfinite(z) else None, "reject_z": REJECT_Z,
                    "agreement_with": "labels" if ds.y is not None else "ANN",
                    "agreement_before": agree["before"], "agreement_after": agree["after"]}
    if result.accepted:
        return result.snn
    logger.warning("RMPE calibration moved the SNN significantly away from the ANN on the "
                   "calibration data (output error %.4g -> %.4g, %.1f standard errors): "
                   "keeping the potentials the SNN had before. Fine-tune the QCFS ANN "
                   "(onnx-rmpe finetune) or calibrate with more samples.",
                   mse["before"], mse["after"], z)
    return before

def _fast_form(snn: onnx.ModelProto) -> onnx.ModelProto:
    """The network-unrolled form of a multi-step SNN with T <= 64 (as ``evaluate`` runs it);
    any other model as it is."""
    T = int(get_metadata(snn).get("onnx_rmpe.T", 0))
    if not is_snn(snn) or not 1 <= T <= UNROLL_MAX_T:
        return snn
    from onnx_rmpe.forms import snn_to_unrolled

    return snn_to_unrolled(snn)


def _outputs(model: onnx.ModelProto, ds: Dataset, batch_size: int, threads: int | None,
             device: Device) -> np.ndarray:
    """The first output of ``model`` over ``ds`` (for an SNN: averaged over the steps)."""
    session = make_session(model, threads=threads, device=device)
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    return np.concatenate([session.run([out], {name: ds.x[sl]})[0]
                           for sl in batches(len(ds), batch_size)])

def _warn_silent(reports: list[LayerReport]) -> None:
    """Warn about spiking layers that never fired on the calibration data."""
    silent = [r.name for r in reports if r.firing_rate == 0.0]
    if silent:
        shown = ", ".join(silent[:5]) + (", ..." if len(silent) > 5 else "")
        logger.warning("%d spiking layer(s) never fired on the calibration data (%s): every "
                       "later layer sees no input from them; check the weights, the input "
                       "scale and the thresholds", len(silent), shown)
