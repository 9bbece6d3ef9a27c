"""The training recipe of QCFS fine-tuning: optimizer, schedule, loss, augmentation.

Loss (per batch, student logits ``s``, labels ``y``, teacher logits ``t`` of the ReLU
network, distillation weight ``a`` in [0, 1], temperature ``tau``)::

    loss = (1 - a) * CE(s, y) + a * tau^2 * KL(softmax(t / tau) || softmax(s / tau))

``a = 1`` needs no labels (pure distillation: the QCFS network learns to reproduce the
ReLU network's outputs); ``a = 0`` is plain cross-entropy. The learning rate follows
``schedule`` per optimizer step: ``cosine`` (from ``lr`` to 0 over all steps),
``onecycle`` (torch's OneCycleLR, peak ``lr``, 30 % warm-up) or ``constant``.
``augment`` shifts each image by up to 2 pixels in each direction (zero padding), the
light augmentation that suits small images; the teacher sees the same shifted images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from onnx_rmpe.recipe import SHIFT, Recipe

logger = logging.getLogger(__name__)

def make_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    lr = recipe.learning_rate
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


def make_schedule(recipe: Recipe, opt: torch.optim.Optimizer, total_steps: int):
    """A scheduler stepped once per batch (``None`` for a constant rate)."""
    total = max(int(total_steps), 1)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=recipe.learning_rate, total_steps=total, pct_start=0.3,
            cycle_momentum=recipe.optimizer == "sgd" and recipe.momentum > 0)
    return None


def loss_fn(student: torch.Tensor, labels: torch.Tensor | None, teacher: torch.Tensor | None,
            *, distill: float, temperature: float) -> torch.Tensor:
    """The loss of the module docstring; ``labels`` or ``teacher`` may be None at weight 0."""
    loss = student.new_zeros(())
    if distill < 1:
        loss = loss + (1 - distill) * torch.nn.functional.cross_entropy(student, labels)
    if distill > 0:
        tau = float(temperature)
        kl = torch.nn.functional.kl_div(torch.log_softmax(student / tau, -1),
                                        torch.log_softmax(teacher / tau, -1),
                                        reduction="batchmean", log_target=True)
        loss = loss + distill * tau * tau * kl
    return loss


def shift_images(x: torch.Tensor, gen: torch.Generator, max_shift: int = SHIFT) -> torch.Tensor:
    """Each image of ``x`` ([N, C, H, W]) shifted by its own random (dy, dx) in
    [-max_shift, max_shift], zeros shifted in."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    rows = offsets[:, 0, None] + torch.arange(h)[None]          # [N, H]
    cols = offsets[:, 1, None] + torch.arange(w)[None]          # [N, W]
    idx = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[idx, chan, rows[:, None, :, None], cols[:, None, None, :]]


Teacher = Callable[[np.ndarray], np.ndarray]


def fit(net, x: np.ndarray, y: np.ndarray | None, *, recipe: Recipe, distill: float,
        teacher: Teacher | None, epochs: int, seed: int,
        on_step: Callable[[], None] | None = None,
        on_epoch: Callable[[int, float, float], None] | None = None) -> None:
    """Train ``net`` (an :class:`~onnx_rmpe.torch.OnnxModule`) for ``epochs`` epochs.

    ``teacher`` maps a batch of inputs to the reference logits (needed when
    ``distill > 0``). Every threshold ``lam`` is kept >= 1e-4 after each step.
    ``on_epoch(epoch, mean_loss, seconds)`` is called after each epoch.
    """
    opt = make_optimizer(recipe, net.parameters())
    steps = -(-len(x) // recipe.batch_size)
    sched = make_schedule(recipe, opt, epochs * steps)
    X = torch.from_numpy(x)
    Y = None if y is None else torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        start, total, seen = time.perf_counter(), 0.0, 0
        net.train()
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), recipe.batch_size):
            idx = perm[i:i + recipe.batch_size]
            xb = X[idx]
            if recipe.augment:
                xb = shift_images(xb, gen)
            target = None
            if distill > 0:
                target = torch.from_numpy(teacher(xb.numpy()))
            opt.zero_grad()
            loss = loss_fn(net(xb), None if Y is None else Y[idx], target, distill=distill,
                           temperature=recipe.temperature)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            with torch.no_grad():
                for lam in net.lam_parameters():
                    lam.clamp_(min=1e-4)
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
            if on_step:
                on_step()
        if on_epoch:
            on_epoch(epoch, total / seen, time.perf_counter() - start)


__all__ = ["Teacher", "fit", "loss_fn", "make_optimizer", "make_schedule", "shift_images"]
