"""The pass lists of the conversion, written once (``convert``, ``inspect`` and the forms use them).

* :func:`prepare_passes`: an exported ANN to a clean graph the converter understands
  (normalize, simplify_ops, sink_readout, fold_batchnorm, fold_batchnorm_forward,
  recognize_qcfs). :func:`~onnx_rmpe.passes.support.check_supported` is a check, not a
  pass: the caller runs it after these.
* :func:`qcfs_passes`: ReLU-like activations to QCFS with the given thresholds, then max
  pools in front of their activation.
* :func:`if_passes`: QCFS to IF neurons, time merged into the batch.

Every pass is a :class:`~onnx_rmpe.passes.base.GraphPass` whose ``ensures`` checks the
invariant of its docstring (see :mod:`onnx_rmpe.passes.invariants`) when checks are on.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnx_rmpe.ops import DEFAULT_PHI
from onnx_rmpe.passes import invariants
from onnx_rmpe.passes.base import FunctionPass, Sequential
from onnx_rmpe.passes.blocked_if_step import blocked_if_step
from onnx_rmpe.passes.equalize_channels import equalize_channels
from onnx_rmpe.passes.fold_batchnorm import fold_batchnorm
from onnx_rmpe.passes.fold_batchnorm_forward import fold_batchnorm_forward
from onnx_rmpe.passes.maxpool_reorder import maxpool_reorder
from onnx_rmpe.passes.normalize import normalize
from onnx_rmpe.passes.qcfs_to_if import qcfs_to_if
from onnx_rmpe.passes.readout import sink_readout
from onnx_rmpe.passes.recognize_qcfs import recognize_qcfs
from onnx_rmpe.passes.relu_to_qcfs import relu_to_qcfs
from onnx_rmpe.passes.simplify_ops import simplify_ops
from onnx_rmpe.passes.streaming import to_streaming
from onnx_rmpe.passes.unroll_steps import unroll_steps


def prepare_passes() -> list[FunctionPass]:
    """The passes from an exported ANN to a graph ready for thresholds (in order)."""
    return [
        FunctionPass("normalize", normalize, ensures=invariants.after_normalize),
        FunctionPass("simplify_ops", simplify_ops, ensures=invariants.after_simplify_ops),
        FunctionPass("sink_readout", sink_readout),
        FunctionPass("fold_batchnorm", fold_batchnorm),
        FunctionPass("fold_batchnorm_forward", fold_batchnorm_forward),
        FunctionPass("recognize_qcfs", recognize_qcfs),
    ]


def qcfs_passes(*, thresholds: Mapping[str, float], levels: int,
                channel_ranges: Mapping | None = None) -> list[FunctionPass]:
    """ReLU-like activations to QCFS (``thresholds``: node name -> lam), then per-channel
    thresholds (``channel_ranges``: node name -> lam per channel, if given), then max
    pools."""
    equalize = [FunctionPass("equalize_channels", equalize_channels, ranges=channel_ranges)] \
        if channel_ranges else []
    return [
        FunctionPass("relu_to_qcfs", relu_to_qcfs, ensures=invariants.after_relu_to_qcfs,
                     thresholds=thresholds, levels=levels),
        *equalize,
        FunctionPass("maxpool_reorder", maxpool_reorder,
                     ensures=invariants.after_maxpool_reorder),
    ]


def if_passes(*, T: int, phi: float = DEFAULT_PHI, form: str | None = None,
              chunk: bool = False) -> list[FunctionPass]:
    """QCFS to IF neurons for ``T`` steps (``chunk``: the chunked IF op)."""
    options = {"chunk": True} if chunk else {}
    return [FunctionPass("qcfs_to_if", qcfs_to_if, ensures=invariants.after_qcfs_to_if,
                         T=T, phi=phi, form=form, **options)]


def streaming_passes() -> list[FunctionPass]:
    """A multi-step SNN to its one-step streaming graph."""
    return [FunctionPass("to_streaming", to_streaming, ensures=invariants.after_to_streaming)]


def unrolled_passes(*, T: int) -> list[FunctionPass]:
    """A multi-step SNN to the streaming step written ``T`` times over."""
    return [*streaming_passes(), FunctionPass("unroll_steps", unroll_steps, T=T)]


def sequential(passes: list[FunctionPass], *, check: bool | None = None) -> Sequential:
    return Sequential(*passes, check=check)


def blocked_step_passes() -> list[FunctionPass]:
    """The IF steps of a network-unrolled SNN (shapes inferred) in NCHWc-friendly ops."""
    return [FunctionPass("blocked_if_step", blocked_if_step)]


__all__ = ["blocked_step_passes", "if_passes", "prepare_passes", "qcfs_passes", "sequential",
           "streaming_passes", "unrolled_passes"]
