"""Train a plain (ReLU) torch classifier: the one loop the demo, tests and benchmarks share.

Cross-entropy on labelled images, mini-batches drawn from a seeded permutation each epoch::

    for each epoch: perm = randperm(N, generator=seed)
        for each batch of ``batch`` indices: loss = CE(net(augment(x[idx])), y[idx])
            step the optimizer (Adam, or AdamW when ``weight_decay`` > 0), then the
            one-cycle schedule when ``max_lr`` is given

The same seed, data and options give the same weights (one torch thread while training:
multi-threaded CPU kernels do not sum in a fixed order). This is for building the ANNs that
onnx-rmpe converts (the built-in example, tests, benchmarks); QCFS fine-tuning has its own
recipe (:mod:`onnx_rmpe.torch.training`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

#: ``augment(batch, generator) -> batch``, e.g. random flips drawn from the generator.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def train_classifier(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int,
                     lr: float = 1e-3, batch: int = 64, seed: int = 0,
                     weight_decay: float = 0.0, max_lr: float | None = None,
                     augment: Augment | None = None, reset: bool = False,
                     threads: int | None = 1,
                     on_epoch: Callable[[int, float, float], None] | None = None,
                     on_batch: Callable[[int, int], None] | None = None) -> torch.nn.Module:
    """Train ``net`` in place for ``epochs`` epochs; returns it in eval mode.

    ``reset`` re-initializes every submodule from ``seed`` first (the same start whatever
    ran before the net was built). ``threads``: torch threads while training (``None``:
    leave as is). ``on_epoch(epoch, last_loss, seconds)`` after each epoch (1-based),
    ``on_batch(epoch, batch_index)`` after each step.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(net, x, y, epochs=epochs, lr=lr, batch=batch, seed=seed,
                      weight_decay=weight_decay, max_lr=max_lr, augment=augment, reset=reset,
                      on_epoch=on_epoch, on_batch=on_batch)
    finally:
        torch.set_num_threads(before)


def _train(net, x, y, *, epochs, lr, batch, seed, weight_decay, max_lr, augment, reset,
           on_epoch, on_batch):
    torch.manual_seed(seed)
    if reset:
        for module in net.modules():
            if module is not net and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=weight_decay) \
        if weight_decay else torch.optim.Adam(net.parameters(), lr)
    steps = -(-len(x) // batch)
    sched = None if max_lr is None else \
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr, total_steps=epochs * steps)
    X, Y = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(len(X), generator=gen)
        for step, i in enumerate(range(0, len(X), batch)):
            idx = perm[i:i + batch]
            xb = X[idx] if augment is None else augment(X[idx], gen)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xb), Y[idx])
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if on_batch is not None:
                on_batch(epoch, step)
        if on_epoch is not None:
            on_epoch(epoch, float(loss.detach()), time.perf_counter() - start)
    return net.eval()


__all__ = ["Augment", "train_classifier"]
