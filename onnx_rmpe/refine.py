"""Joint threshold refinement at the network output: a coordinate-descent sweep after the search.

The per-layer search (:mod:`onnx_rmpe.thresholds`) minimizes each layer's own squared
error. At ``T <= 2`` that objective lowers thresholds too far: a low ``theta`` matches the
small activations of its own layer, but the spikes it emits are coarse and uneven, and the
layers after it pay. This step scores a whole set of thresholds by the error at the
network *output*,

    E(theta_1..theta_n) = sum_i || y_SNN,i(T; theta) - y_ANN,i ||^2

(``y_SNN``: the SNN's time-averaged first output, ``y_ANN``: the ReLU ANN's, same
calibration sample; no labels), and improves it one layer at a time, front to back, all
others held: a line search multiplies layer ``l``'s threshold by ``STEP`` (or
``1 / STEP``, whichever is better) as long as that lowers ``E`` by more than the
relative ``TIE`` (at most ``MAX_STEPS`` times), then tries one finer move by ``FINE``
either way. With ``sweeps > 1`` the sweep is repeated.

``convert`` runs it twice: on the uncalibrated SNN right after the search
(``v_init = 0``), and again after RMPE calibration on the calibrated SNN, each layer's
``v_init`` scaled with its threshold (:func:`with_thresholds`). RMPE's per-neuron
``v_init`` is the constant (bias-like) correction of each neuron's mean rate; this step
changes what RMPE cannot, the size of a spike and so the resolution of the rates.

Invariant: ``E`` of the returned thresholds is at most ``E`` of the given ones, measured
on the same data (each accepted move lowers it); every threshold stays positive.

Cost: one SNN pass over the calibration data per candidate, ``1 + sweeps * layers *
(4 to 3 + MAX_STEPS)`` passes in all (the SNN at the given ``T``; a few seconds each on 512
Fashion-MNIST images at ``T <= 8``), plus one ANN pass. Deterministic: a move must beat the
best error by ``TIE``, so float rounding (batch size, machine) does not flip near-ties.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_rmpe.data import Dataset
from onnx_rmpe.ops import DOMAIN, IF_OP
from onnx_rmpe.runtime.memory import plan_batch
from onnx_rmpe.runtime.session import Device, batches, make_session
from onnx_rmpe.thresholds import relu_reference, set_thresholds

logger = logging.getLogger(__name__)

#: Multiplicative step of the line search of one layer's threshold (up and down).
STEP = float(2.0 ** 0.5)
#: At most this many steps in the better direction.
MAX_STEPS = 4
#: The final finer move (up or down) around the line search's result.
FINE = float(2.0 ** 0.25)
#: ``convert`` refines only up to this T: its cost grows with T (one SNN pass per
#: candidate) while the gain is at low T, where the per-layer search over-lowers thresholds.
MAX_T = 8
#: A move is accepted only when it lowers the output error by this fraction.
TIE = 1e-3
#: ``convert`` skips the refinement when its estimated work (:func:`estimated_macs`) is above
#: this many multiply-accumulates: at ImageNet size it is hundreds of SNN passes (measured:
#: light SqueezeNet at 224x224, T=4, 4 samples, 1.2e12 MACs: 370 s of refinement at load
#: 3, a 966 s conversion at load 10 against 16 s without; ResNet-50 would be 2.6e13,
#: hours). The Fashion-MNIST nets at 512 samples and T=8 stay under 0.7e12.
MAX_MACS = 1e12


@dataclass
class RefineReport:
    """Output error (mean squared, per output element) before and after, and the moves."""

    error_start: float
    error_end: float
    moves: dict[str, float]
    passes: int
    seconds: float


def refine_thresholds(build: Callable[[dict[str, float]], onnx.ModelProto],
                      reference: onnx.ModelProto, data: Dataset,
                      thresholds: dict[str, float], *, sweeps: int = 1,
                      batch_size: int = 128, threads: int | None = None,
                      device: Device = "cpu", max_memory: int | None = None
                      ) -> tuple[dict[str, float], RefineReport]:
    """Refine ``thresholds`` (layer name -> theta) by the SNN's output error on ``data``.

    ``build(thresholds)`` returns the SNN with those thresholds (layers not named keep
    theirs); ``reference`` is the ANN whose first output the SNN's should match. Layers are
    visited in the order of ``thresholds``. Returns the refined thresholds and a
    :class:`RefineReport`.
    """
    start_time = time.perf_counter()
    batch_size = plan_batch(build(thresholds), batch_size, max_memory,
                            what="the threshold refinement")
    target = _outputs(reference, data, batch_size, threads, device)
    current = dict(thresholds)

    def score(th: dict[str, float]) -> float:
        return _error(build(th), target, data, batch_size, threads, device)

    best = score(current)
    first, passes = best, 1
    for _ in range(sweeps):
        for name in thresholds:
            best, passes = _line_search(name, current, best, score, passes)
    n = target.size
    moves = {k: current[k] / thresholds[k] for k in thresholds if current[k] != thresholds[k]}
    report = RefineReport(first / n, best / n, moves, passes, time.perf_counter() - start_time)
    logger.info("refine: output error %.4g -> %.4g, %d threshold(s) moved, %d SNN passes in "
                "%.1fs", report.error_start, report.error_end, len(moves), passes,
                report.seconds)
    return current, report


def _line_search(name: str, current: dict[str, float], best: float, score, passes: int
                 ) -> tuple[float, int]:
    """Move ``current[name]`` by ``STEP`` while it lowers the output error, then by
    ``FINE`` once; updates ``current`` in place, returns the error and the pass count."""
    base = current[name]
    tried = {}
    for f in (STEP, 1 / STEP):
        tried[f] = score({**current, name: base * f})
        passes += 1
    f = min(tried, key=tried.get)
    if tried[f] < best * (1 - TIE):
        best, factor = tried[f], f
        for _ in range(MAX_STEPS - 1):
            e = score({**current, name: base * factor * f})
            passes += 1
            if not e < best * (1 - TIE):
                break
            best, factor = e, factor * f
        current[name] = base * factor
    base = current[name]
    for f in (FINE, 1 / FINE):
        e = score({**current, name: base * f})
        passes += 1
        if e < best * (1 - TIE):
            best, current[name] = e, base * f
            break
    logger.debug("refine: %s x%.3g (output error %.4g)", name, current[name] / base, best)
    return best, passes


#: Scales of a layer's RMPE ``v_init`` that :func:`refine_potentials` tries (1 is kept
#: unless one of them lowers the output error by ``TIE``).
POTENTIAL_SCALES = (0.5, 0.0)


@dataclass
class PotentialReport:
    """Output error (mean squared, per output element) before and after, the scales kept."""

    error_start: float
    error_end: float
    scales: dict[str, float]
    passes: int
    seconds: float
    #: Per calibration sample, the returned SNN's output error (its mean is ``error_end``).
    sample_errors: np.ndarray | None = None


def refine_potentials(snn: onnx.ModelProto, reference: onnx.ModelProto, data: Dataset, *,
                      batch_size: int = 128, threads: int | None = None,
                      device: Device = "cpu", max_memory: int | None = None
                      ) -> tuple[onnx.ModelProto, PotentialReport]:
    """Scale each IF layer's ``v_init`` by ``alpha`` in ``{1} + POTENTIAL_SCALES`` by the
    output error ``E`` of :func:`refine_thresholds` against ``reference``: first the best
    common ``alpha`` of all layers, then each layer's own, front to back.

    RMPE fits each layer's ``v_init = T (E[a] - E[r])`` to the QCFS target ANN, one layer at
    a time; after the thresholds and weights were fitted to the ReLU ANN's output, a layer's
    full offset can overshoot (``alpha = 1``: RMPE as calibrated, ``0``: the plain start
    ``phi theta``). Invariant: ``E`` of the result is at most ``E`` of ``snn`` on ``data``
    (a scale is kept only when it lowers ``E`` by ``TIE``). ``2 * layers + 3`` SNN passes.
    """
    start_time = time.perf_counter()
    batch_size = plan_batch(snn, batch_size, max_memory, what="the potential refinement")
    target = _outputs(reference, data, batch_size, threads, device)
    layers = [n.name for n in snn.graph.node if n.domain == DOMAIN and n.op_type == IF_OP
              and len(n.input) > 2 and n.input[2]]
    scales: dict[str, float] = {}

    def score(candidate: dict[str, float]) -> np.ndarray:
        return _sample_sq(with_potential_scales(snn, candidate), target, data, batch_size,
                          threads, device)

    kept = score(scales)  # per-sample errors of the best scales so far
    best = first = float(kept.sum())
    passes = 1
    for alpha in POTENTIAL_SCALES:  # start: the best common scale
        errors = score(dict.fromkeys(layers, alpha))
        passes += 1
        if errors.sum() < best * (1 - TIE):
            kept, best, scales = errors, float(errors.sum()), dict.fromkeys(layers, alpha)
    for name in layers:  # then each layer's own, front to back
        for alpha in (1.0, *POTENTIAL_SCALES):
            if alpha == scales.get(name, 1.0):
                continue
            errors = score({**scales, name: alpha})
            passes += 1
            if errors.sum() < best * (1 - TIE):
                kept, best, scales[name] = errors, float(errors.sum()), alpha
    scales = {k: v for k, v in scales.items() if v != 1.0}
    n = target.size
    report = PotentialReport(first / n, best / n, scales, passes,
                             time.perf_counter() - start_time, kept * len(target) / n)
    logger.info("refine potentials: output error %.4g -> %.4g, %d layer(s) rescaled, %d SNN "
                "passes in %.1fs", report.error_start, report.error_end, len(scales), passes,
                report.seconds)
    return with_potential_scales(snn, scales), report


def with_potential_scales(snn: onnx.ModelProto, scales: dict[str, float]) -> onnx.ModelProto:
    """A copy of a multi-step ``snn`` with the named IF layers' ``v_init`` multiplied."""
    model = onnx.ModelProto.FromString(snn.SerializeToString())
    factor = {n.input[2]: scales[n.name] for n in model.graph.node
              if n.domain == DOMAIN and n.op_type == IF_OP and n.name in scales
              and len(n.input) > 2}
    for init in model.graph.initializer:
        if init.name in factor:
            v = numpy_helper.to_array(init) * np.float32(factor[init.name])
            init.CopyFrom(numpy_helper.from_array(v.astype(np.float32), init.name))
    return model


def output_error(snn: onnx.ModelProto, reference: onnx.ModelProto, data: Dataset, *,
                 batch_size: int = 128, threads: int | None = None, device: Device = "cpu",
                 max_memory: int | None = None) -> float:
    """Mean squared distance, per output element, of ``snn``'s first output to
    ``reference``'s on ``data`` (the error :class:`RefineReport` reports): one pass each."""
    batch_size = plan_batch(snn, batch_size, max_memory, what="the output error")
    target = _outputs(reference, data, batch_size, threads, device)
    return _error(snn, target, data, batch_size, threads, device) / target.size


def sample_errors(snn: onnx.ModelProto, reference: onnx.ModelProto, data: Dataset, *,
                  batch_size: int = 128, threads: int | None = None, device: Device = "cpu",
                  max_memory: int | None = None) -> np.ndarray:
    """Per calibration sample, the mean squared distance of ``snn``'s first output to
    ``reference``'s (float64, ``[len(data)]``; their mean is :func:`output_error`)."""
    batch_size = plan_batch(snn, batch_size, max_memory, what="the output error")
    target = _outputs(reference, data, batch_size, threads, device)
    return _sample_sq(snn, target, data, batch_size, threads, device) * len(target) / target.size


def _sample_sq(snn: onnx.ModelProto, target: np.ndarray, data: Dataset, batch_size: int,
               threads: int | None, device: Device) -> np.ndarray:
    """Per sample, the summed squared distance of ``snn``'s first output to ``target``."""
    out = _outputs(snn, data, batch_size, threads, device)
    return np.square(out - target).reshape(len(target), -1).sum(axis=1)


def _error(snn: onnx.ModelProto, target: np.ndarray, data: Dataset, batch_size: int,
           threads: int | None, device: Device) -> float:
    """Summed squared distance of ``snn``'s first output to ``target`` (float64)."""
    out = _outputs(snn, data, batch_size, threads, device)
    return float(np.square(out.astype(np.float64) - target).sum())


def _outputs(model: onnx.ModelProto, data: Dataset, batch_size: int, threads: int | None,
             device: Device) -> np.ndarray:
    session = make_session(model, threads=threads, device=device)
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    return np.concatenate([session.run([out], {name: data.x[sl]})[0]
                           for sl in batches(len(data), batch_size)]).astype(np.float64)




def with_thresholds(snn: onnx.ModelProto, thresholds: dict[str, float]) -> onnx.ModelProto:
    """A copy of a multi-step ``snn`` with the named IF layers' thresholds replaced.

    Each layer's ``v_init`` is scaled with its threshold (``v_init`` is in units of the
    potential, so the calibrated offset keeps its size relative to ``theta``).
    """
    model = onnx.ModelProto.FromString(snn.SerializeToString())
    scale: dict[str, float] = {}
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == IF_OP and node.name in thresholds:
            scale[node.input[1]] = ("theta", thresholds[node.name])
            scale[node.input[2]] = ("v_init", node.input[1])
    inits = {t.name: t for t in model.graph.initializer}
    old = {}
    for name, (kind, value) in scale.items():
        if kind == "theta":
            old[name] = float(numpy_helper.to_array(inits[name]))
            inits[name].CopyFrom(numpy_helper.from_array(np.array(value, np.float32), name))
    for name, (kind, theta_name) in scale.items():
        if kind == "v_init" and name in inits:
            ratio = float(numpy_helper.to_array(inits[theta_name])) / old[theta_name]
            v = numpy_helper.to_array(inits[name]) * np.float32(ratio)
            inits[name].CopyFrom(numpy_helper.from_array(v.astype(np.float32), name))
    return model


def estimated_macs(layers: int, macs_per_sample: int, samples: int, T: int) -> float:
    """Lower bound of the MACs of ``convert``'s two refinements: ``2 * (1 + 4 * layers)``
    SNN passes of ``T`` steps over ``samples`` inputs (dense MACs, spikes counted as MACs)."""
    return 2.0 * (1 + 4 * layers) * T * samples * float(macs_per_sample)


def affordable(qcfs: onnx.ModelProto, data: Dataset, *, T: int, layers: int) -> bool:
    """Whether ``convert`` refines: :func:`estimated_macs` at most :data:`MAX_MACS`
    (deterministic: from the model's shapes, not from a clock); logs why when it does not."""
    from onnx_rmpe.runtime.synops import model_macs

    macs = sum(model_macs(qcfs, data.x[:1]).values())
    work = estimated_macs(layers, macs, len(data), T)
    if work <= MAX_MACS:
        return True
    logger.info("refine skipped: %d layer(s) x %.3g MACs per sample x %d sample(s) x T=%d "
                "is about %.2g MACs (at least %d SNN passes), above onnx_rmpe.refine.MAX_MACS "
                "= %.2g; thresholds from the per-layer search (reconstruct='auto' skips the weight "
                "reconstruction with it)", layers, macs, len(data), T,
                work, 2 * (1 + 4 * layers), MAX_MACS)
    return False


def refine_before_rmpe(qcfs: onnx.ModelProto, thresholds: dict[str, float], data: Dataset, *,
                       to_snn: Callable[[onnx.ModelProto], onnx.ModelProto],
                       **run) -> tuple[dict[str, float], RefineReport]:
    """Refine searched ``thresholds`` of the uncalibrated SNN ``to_snn(qcfs)`` (``v_init = 0``)
    against the ReLU ANN of ``qcfs``. ``run``: batch_size, threads, device, max_memory."""
    return refine_thresholds(lambda th: to_snn(set_thresholds(qcfs, th)), relu_reference(qcfs),
                             data, thresholds, **run)


def refine_after_rmpe(snn: onnx.ModelProto, qcfs: onnx.ModelProto, thresholds: dict[str, float],
                      data: Dataset, **run
                      ) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, float],
                                 RefineReport]:
    """Refine the thresholds of the RMPE-calibrated ``snn`` once more (``v_init`` scaled with
    them, see :func:`with_thresholds`), now that the initial potentials are in place.

    Returns the SNN and its QCFS ANN with the refined thresholds, the thresholds and the
    report.
    """
    chosen, report = refine_thresholds(lambda th: with_thresholds(snn, th),
                                       relu_reference(qcfs), data, thresholds, **run)
    return with_thresholds(snn, chosen), set_thresholds(qcfs, chosen), chosen, report


__all__ = ["FINE", "MAX_MACS", "MAX_STEPS", "MAX_T", "POTENTIAL_SCALES", "STEP",
           "PotentialReport", "RefineReport", "affordable", "estimated_macs", "output_error",
           "refine_after_rmpe", "refine_before_rmpe", "refine_potentials", "refine_thresholds",
           "sample_errors", "with_potential_scales", "with_thresholds"]
