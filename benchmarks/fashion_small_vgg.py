"""A small fully trained Fashion-MNIST VGG-like net (BN, AvgPool) for finetune_fashion.py.

Stand-in for ``vgg_bn_avg`` of ``benchmarks/fashion_nets.py`` (branch acc-post) while that
one trains: the same block structure and training recipe, a quarter of the widths so that
it trains in ~20 minutes on the shared 2-core machine. Conv-BN-ReLU 8, AvgPool, 16, 16,
AvgPool, 32, AvgPool, FC 64 + ReLU, FC 10; AdamW (weight decay 5e-4), one-cycle (max lr
4e-3), batch 128, random horizontal flip and shift by up to 2 pixels, 5 epochs on all
60 000 training images, seed 0, one torch thread. Input ``input`` [N, 1, 28, 28] = pixels
/ 255; output ``logits``. Cached as ``~/.cache/onnx-rmpe-bench/vgg_small_avg.onnx`` + .json.

Usage::

    python benchmarks/fashion_small_vgg.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onnx_rmpe.torch.classifier import train_classifier
from onnx_rmpe.torch.export import export

CACHE = Path(os.environ.get("ONNX_RMPE_BENCH_CACHE", Path.home() / ".cache/onnx-rmpe-bench"))


def net() -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(1, 8), nn.AvgPool2d(2), *block(8, 16), *block(16, 16),
                         nn.AvgPool2d(2), *block(16, 32), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, 10))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and shift by up to 2 pixels (zero padding)."""
    n = len(x)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = nn.functional.pad(x, (2, 2, 2, 2))
    rows = (torch.arange(28)[None] + torch.randint(0, 5, (n,), generator=gen)[:, None])
    cols = (torch.arange(28)[None] + torch.randint(0, 5, (n,), generator=gen)[:, None])
    return pad[torch.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--data", default="/work/shared/data/fashion_mnist.npz")
    args = p.parse_args()
    torch.set_num_threads(1)
    with np.load(args.data) as d:
        scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
        xtr, ytr = scale(d["x_train"]), d["y_train"].astype(np.int64)
        xte, yte = scale(d["x_test"]), d["y_test"].astype(np.int64)
    torch.manual_seed(0)
    model = net()
    start = time.perf_counter()

    def test_accuracy() -> float:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(torch.from_numpy(xte[i:i + 1000])).argmax(1)
                              for i in range(0, len(xte), 1000)])
        return float((pred.numpy() == yte).mean())

    def epoch_done(epoch: int, loss: float, seconds: float) -> None:
        print(f"epoch {epoch}: test {test_accuracy():.4f}", flush=True)

    train_classifier(model, xtr, ytr, epochs=args.epochs, lr=1e-3, batch=128, seed=0,
                     weight_decay=5e-4, max_lr=4e-3, augment=augment, on_epoch=epoch_done)
    proto = export(model, xtr[:1], opset=None, output_names=["logits"])
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / ".vgg_small_avg.onnx.tmp"
    tmp.write_bytes(proto.SerializeToString())
    record = {"name": "vgg_small_avg", "epochs": args.epochs, "train_samples": len(xtr),
              "test_accuracy_torch": test_accuracy(),
              "seconds": time.perf_counter() - start,
              "recipe": "AdamW wd 5e-4, OneCycle 4e-3, batch 128, flip + shift 2, seed 0",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (CACHE / "vgg_small_avg.json").write_text(json.dumps(record, indent=1))
    os.replace(tmp, CACHE / "vgg_small_avg.onnx")
    print(record)


if __name__ == "__main__":
    main()
