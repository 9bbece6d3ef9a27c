"""SNN-level fine-tuning: train a converted SNN itself for its T with surrogate gradients.

The SNN written by :func:`onnx_rmpe.conversion.convert` (``onnx_rmpe::IFNeuron`` nodes, time
merged into the batch) runs in torch through :class:`onnx_rmpe.torch.OnnxModule`, whose
IF handler reproduces the ONNX dynamics step by step (:mod:`onnx_rmpe.torch.surrogate`)
and differentiates the spike with a triangle surrogate. Trained: every neuron's
threshold ``theta`` and start potential ``v_init`` (RMPE's calibrated values are the
starting point) and, with ``train_weights``, the weights and biases too. Loss, on the
time-averaged logits ``s`` of the SNN::

    loss = (1 - a) * CE(s, y) + a * tau^2 * KL(softmax(t / tau) || softmax(s / tau))

with ``t`` the logits of ``teacher`` (the ANN, in onnxruntime) and ``a`` = 1 when the data
has no labels. The values are written back into the same graph, so the result is an SNN
that stock onnxruntime runs, with the same ops as before. Guarantee: the returned model's
loss on the monitor set (the first ``MONITOR`` training samples) is never above the
input's: if training did not lower it, the input values are kept (``kept_input``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_rmpe.data import load_data
from onnx_rmpe.errors import MissingDependencyError, OptionError
from onnx_rmpe.ops import DOMAIN, IF_OP

logger = logging.getLogger(__name__)

MONITOR = 512
#: Adam learning rates: neuron parameters (theta, v_init), weights (``train_weights``)
NEURON_LR = 1e-2
WEIGHT_LR = 1e-4


@dataclass
class SnnFinetuneResult:
    """The fine-tuned SNN; losses on the monitor set (mean per sample) before and after."""

    model: onnx.ModelProto
    T: int
    loss_before: float
    loss_after: float
    distill: float
    steps: int
    seconds: float
    kept_input: bool = False


def finetune_snn(snn: str | os.PathLike | onnx.ModelProto, data, *,
                 teacher: str | os.PathLike | onnx.ModelProto | None = None, steps: int = 200,
                 batch_size: int = 64, lr: float = NEURON_LR, train_weights: bool = False,
                 weight_lr: float = WEIGHT_LR, distill: float | None = None,
                 temperature: float = 1.0, seed: int = 0) -> SnnFinetuneResult:
    """Fine-tune the IF neurons (and optionally the weights) of ``snn`` for its own T.

    ``data``: anything :func:`onnx_rmpe.data.load_data` takes; labels optional. ``teacher``:
    the ANN whose logits are distilled (needed unless ``distill=0`` with labels);
    ``distill``: weight of the distillation loss (None: 1 with a teacher, else 0).
    ``steps`` Adam steps of ``batch_size`` samples, learning rate ``lr`` for ``theta`` and
    ``v_init``, ``weight_lr`` for weights when ``train_weights``.
    """
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch", "SNN fine-tuning") from None
    from onnx_rmpe.finetune import _teacher
    from onnx_rmpe.modelio import read_model
    from onnx_rmpe.torch.interpreter import OnnxModule
    from onnx_rmpe.torch.training import loss_fn

    proto, source = read_model(snn)
    T = _check(proto, source, steps, batch_size, lr)
    train = load_data(data)
    weight = _distill(distill, teacher, train.y is not None)
    teach = _teacher(read_model(teacher)[0], torch.get_num_threads()) if weight > 0 else None
    mon_x = train.x[:MONITOR]
    mon_t = teach(mon_x) if teach else None
    mon_y = None if train.y is None else train.y[:MONITOR]
    start = time.perf_counter()
    torch.manual_seed(seed)
    net = OnnxModule(proto)
    params = [{"params": net.neuron_parameters(), "lr": lr}]
    neuron_ids = {id(p) for p in net.neuron_parameters()}
    others = [p for p in net.parameters() if id(p) not in neuron_ids]
    if train_weights:
        params.append({"params": others, "lr": weight_lr})
    else:
        for p in others:
            p.requires_grad_(False)
    opt = torch.optim.Adam(params)

    def loss_of(x, y, t) -> torch.Tensor:
        out = net(torch.from_numpy(x))
        out = out[0] if isinstance(out, tuple) else out
        return loss_fn(out, None if y is None else torch.from_numpy(y.astype(np.int64)),
                       None if t is None else torch.from_numpy(t), distill=weight,
                       temperature=temperature)

    def monitor() -> float:
        with torch.no_grad():
            return float(sum(loss_of(mon_x[i:i + 256], None if mon_y is None else
                                     mon_y[i:i + 256], None if mon_t is None else
                                     mon_t[i:i + 256]) * len(mon_x[i:i + 256])
                             for i in range(0, len(mon_x), 256))) / len(mon_x)

    before = monitor()
    rng = np.random.default_rng(seed)
    for step in range(steps):
        idx = rng.choice(len(train), size=min(batch_size, len(train)), replace=False)
        xb = train.x[idx]
        opt.zero_grad()
        loss_of(xb, None if train.y is None else train.y[idx],
                teach(xb) if teach else None).backward()
        opt.step()
        with torch.no_grad():
            for theta in net.theta_parameters():
                theta.clamp_(min=1e-4)
        if (step + 1) % 50 == 0:
            logger.debug("SNN fine-tuning step %d/%d", step + 1, steps)
    after = monitor()
    kept = not after < before
    model = proto if kept else net.to_onnx()
    logger.info("SNN fine-tuning of %s (T=%d, %d steps): monitor loss %.4f -> %.4f%s", source,
                T, steps, before, after, " (no gain: input kept)" if kept else "")
    return SnnFinetuneResult(model, T, before, min(before, after), weight, steps,
                             time.perf_counter() - start, kept)


def _check(proto: onnx.ModelProto, source: str, steps: int, batch_size: int, lr: float) -> int:
    Ts = {int(a.i) for n in proto.graph.node if n.domain == DOMAIN and n.op_type == IF_OP
          for a in n.attribute if a.name == "T"}
    if not Ts:
        raise OptionError("snn", f"'{source}' has no {DOMAIN}::{IF_OP} node: give the SNN "
                                 "that `convert` wrote (multistep mode), not an ANN")
    if len(Ts) > 1:
        raise OptionError("snn", f"'{source}' has IF neurons with different T {sorted(Ts)}")
    if steps < 0:
        raise OptionError("steps", f"must be at least 0, got {steps}")
    if batch_size < 1:
        raise OptionError("batch_size", f"must be at least 1, got {batch_size}")
    if not (np.isfinite(lr) and lr > 0):
        raise OptionError("lr", f"must be a positive number, got {lr}")
    return Ts.pop()


def _distill(distill: float | None, teacher, labelled: bool) -> float:
    if distill is None:
        distill = 1.0 if teacher is not None else 0.0
    if not 0 <= distill <= 1:
        raise OptionError("distill", f"must be in [0, 1], got {distill}")
    if distill > 0 and teacher is None:
        raise OptionError("teacher", "distillation needs the ANN whose logits the SNN "
                                       "should match: give --teacher ANN.onnx")
    if distill < 1 and not labelled:
        raise OptionError("distill", "the data has no labels 'y': the SNN can only be "
                                       "fine-tuned by distillation (--teacher, weight 1)")
    return float(distill)


__all__ = ["MONITOR", "SnnFinetuneResult", "finetune_snn"]
