"""Ground-truth Fashion-MNIST networks (issue 11, goal 1): fully trained on all 60k images.

Four architectures, each trained in torch, exported as a ReLU ANN with
``torch.onnx.export(..., dynamo=False)`` (input ``input`` [N, 1, 28, 28] float32 = uint8
pixels / 255, no mean/std; output ``logits`` [N, 10]; dynamic batch) and cached outside git:

- ``vgg_bn_avg``: VGG-like, Conv-BN-ReLU 16, AvgPool, 32, 32, AvgPool, 64, AvgPool,
  FC 128 + ReLU, FC 10;
- ``vgg_bn_max``: the same with MaxPool;
- ``resnet``: ResNet-like, stem Conv-BN-ReLU 16 + AvgPool, residual blocks 16 (identity),
  32/2 and 64/2 (1x1-conv shortcuts), GlobalAveragePool, FC 10;
- ``mobilenet``: MobileNet-like, stem Conv-BN-ReLU6 16, depthwise-separable blocks
  (depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6) 32/2, 64, 128/2, 128, GAP, FC 10.

Recipe (the same for all): AdamW (weight decay 5e-4), one-cycle schedule (max lr 4e-3),
batch 256, light augmentation (random horizontal flip), seed 0; 2 epochs (VGG-like
AvgPool, ResNet-like) or 1 (the others): all that a 2-core CPU shared by seven engineers
allowed in the time. Each cache entry is ``~/.cache/onnx-rmpe-bench/<name>.onnx`` plus
``<name>.json`` (test accuracy in torch and onnxruntime, epochs, seconds, normalisation);
the ``.onnx`` is written to a temporary name and renamed, so a reader never sees half a
file.

Usage::

    python benchmarks/fashion_nets.py [--only vgg_bn_avg,resnet] [--epochs N] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from onnx_rmpe.torch.classifier import train_classifier
from onnx_rmpe.torch.export import export as export_onnx

CACHE = Path(os.environ.get("ONNX_RMPE_BENCH_CACHE", Path.home() / ".cache/onnx-rmpe-bench"))
DATA = "/work/shared/data/fashion_mnist.npz"
SEED = 0
BATCH = 256
NORMALISATION = "x = uint8 pixels / 255 (float32 in [0, 1]), NCHW [N, 1, 28, 28], no mean/std"


# --------------------------------------------------------------------------- networks
def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def vgg_like(widths: tuple[int, ...] = (8, 16, 16, 32), fc: int = 64,
             pool: str = "avg") -> nn.Module:
    """VGG-like: Conv-BN-ReLU blocks, a 2x2 pool after the 1st, 3rd and last block, FC.

    The default widths are the small net of ``rmpe_fashion.py`` (8, AvgPool, 16, 16,
    AvgPool, 32, AvgPool, FC 64); five widths put two blocks in the last stage.
    """
    Pool = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
    w = list(widths)
    layers = [*_block(1, w[0]), Pool(2), *_block(w[0], w[1]), *_block(w[1], w[2]), Pool(2)]
    cin = w[2]
    for c in w[3:]:
        layers += _block(cin, c)
        cin = c
    layers += [Pool(2), nn.Flatten(), nn.Linear(cin * 3 * 3, fc), nn.ReLU(), nn.Linear(fc, 10)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """Basic residual block; a 1x1-conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


def resnet_like(stem: int = 8, blocks: tuple[tuple[int, int], ...] = ((8, 1), (16, 2), (32, 2))
                ) -> nn.Module:
    """Stem Conv-BN-ReLU + AvgPool, residual blocks ``(width, stride)``, GAP, FC 10.

    The defaults are the small net of ``rmpe_fashion.py``.
    """
    layers: list[nn.Module] = [nn.Conv2d(1, stem, 3, padding=1, bias=False),
                               nn.BatchNorm2d(stem), nn.ReLU(), nn.AvgPool2d(2)]
    cin = stem
    for cout, stride in blocks:
        layers.append(Residual(cin, cout, stride))
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def _separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.ReLU6(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]


def mobilenet_like() -> nn.Module:
    """Stem Conv-BN-ReLU6 16, separable blocks 32/2, 64, 128/2, 128, GAP, FC 10."""
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU6()]
    cin = 16
    for cout, stride in ((32, 2), (64, 1), (128, 2), (128, 1)):
        layers += _separable(cin, cout, stride)
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


#: name -> (description, constructor, epochs)
NETS: dict[str, tuple[str, Callable[[], nn.Module], int]] = {
    "vgg_bn_avg": ("VGG-like, BN, AvgPool", lambda: vgg_like((16, 32, 32, 64), 128, "avg"), 2),
    "resnet": ("ResNet-like, 1x1 shortcuts, GAP",
               lambda: resnet_like(16, ((16, 1), (32, 2), (64, 2))), 2),
    "vgg_bn_max": ("VGG-like, BN, MaxPool", lambda: vgg_like((16, 32, 32, 64), 128, "max"), 1),
    "mobilenet": ("MobileNet-like, depthwise, ReLU6", mobilenet_like, 1),
}


# --------------------------------------------------------------------------- data
def load_fashion(path: str = DATA) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``, x float32 [N, 1, 28, 28] in [0, 1]."""
    with np.load(path) as d:
        scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
        return (scale(d["x_train"]), d["y_train"].astype(np.int64),
                scale(d["x_test"]), d["y_test"].astype(np.int64))


def augment(x: torch.Tensor, gen: torch.Generator, shift: bool = False) -> torch.Tensor:
    """Random horizontal flip and (``shift``) a random shift of up to 2 pixels."""
    n = len(x)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if not shift:
        return x
    pad = nn.functional.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    rows = (torch.arange(28)[None] + dy[:, None])[:, :, None]
    cols = (torch.arange(28)[None] + dx[:, None])[:, None, :]
    return pad[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


# --------------------------------------------------------------------------- training
def torch_accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(x[i:i + 1000])).argmax(1)
                          for i in range(0, len(x), 1000)])
    return float((pred.numpy() == y).mean())


def train(net: nn.Module, xtr, ytr, xte, yte, epochs: int, log,
          shift: bool = False) -> tuple[nn.Module, float]:
    """AdamW (wd 5e-4), one-cycle to 4e-3, batch ``BATCH``, flips (and shifts): the shared
    loop :func:`onnx_rmpe.torch.classifier.train_classifier`."""
    steps = (len(xtr) + BATCH - 1) // BATCH
    start = time.perf_counter()

    def batch_done(epoch: int, step: int) -> None:
        if step % 50 == 49 and epoch == 1:
            log(f"epoch 1: {step + 1}/{steps} batches ({time.perf_counter() - start:.0f}s)")

    def epoch_done(epoch: int, loss: float, seconds: float) -> None:
        log(f"epoch {epoch}/{epochs}: test {torch_accuracy(net, xte, yte):.4f} "
            f"({seconds:.0f}s)")

    train_classifier(net, xtr, ytr, epochs=epochs, lr=1e-3, batch=BATCH, seed=SEED,
                     weight_decay=5e-4, max_lr=4e-3, threads=None,
                     augment=lambda xb, gen: augment(xb, gen, shift),
                     on_batch=batch_done, on_epoch=epoch_done)
    return net.eval(), time.perf_counter() - start


def export(net: nn.Module) -> onnx.ModelProto:
    return export_onnx(net.eval(), torch.zeros(1, 1, 28, 28), opset=None,
                       output_names=["logits"])


def ort_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model``'s first output (an ANN, or an SNN's averaged logits),
    onnxruntime on one thread."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    pred = np.concatenate([s.run(None, {name: x[i:i + 250]})[0].argmax(-1)
                           for i in range(0, len(x), 250)])
    return float((pred == y).mean())


def cached(name: str) -> tuple[onnx.ModelProto, dict] | None:
    """The cached ReLU ANN ``name`` and its json, or None when not trained yet."""
    path, meta = CACHE / f"{name}.onnx", CACHE / f"{name}.json"
    if not (path.exists() and meta.exists()):
        return None
    return onnx.load(str(path)), json.loads(meta.read_text())


def build(name: str, data, *, epochs: int | None = None, log=print,
          shift: bool = False) -> dict:
    """Train, export and cache net ``name``; returns its json record."""
    desc, make, default_epochs = NETS[name]
    return train_and_cache(name, desc, make, data, epochs=epochs or default_epochs, log=log,
                           shift=shift)


def train_and_cache(key: str, desc: str, make: Callable[[], nn.Module], data, *, epochs: int,
                    log=print, shift: bool = False) -> dict:
    """Train ``make()`` with :func:`train`, export it and cache it as ``key`` (``.onnx`` and
    its ``.json`` record, written atomically); returns the record."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(SEED)
    net, seconds = train(make(), xtr, ytr, xte, yte, epochs,
                         lambda m: log(f"{key}: {m}"), shift)
    model = export(net)
    record = {"name": key, "description": desc, "epochs": epochs, "train_seconds": seconds,
              "train_samples": len(xtr), "test_accuracy_torch": torch_accuracy(net, xte, yte),
              "test_accuracy": ort_accuracy(model, xte, yte), "normalisation": NORMALISATION,
              "input": "input [N, 1, 28, 28] float32", "output": "logits [N, 10]",
              "parameters": sum(p.numel() for p in net.parameters()),
              "recipe": f"AdamW wd 5e-4, OneCycle max lr 4e-3, batch {BATCH}, random "
                        f"horizontal flip{' and 2-pixel shift' if shift else ''}, "
                        f"seed {SEED}, torch threads {torch.get_num_threads()}",
              "machine": f"2-core shared CPU ({platform.machine()}), no GPU; torch "
                         f"{torch.__version__}", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                        time.gmtime())}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{key}.onnx.tmp"
    onnx.save(model, str(tmp))
    (CACHE / f"{key}.json").write_text(json.dumps(record, indent=1))
    os.replace(tmp, CACHE / f"{key}.onnx")
    log(f"{key}: cached, test accuracy {record['test_accuracy']:.4f} in {seconds:.0f}s")
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(NETS), help="comma-separated net names")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs")
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    p.add_argument("--data", default=DATA)
    p.add_argument("--shift", action="store_true", help="also random 2-pixel shifts")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    data = load_fashion(args.data)
    for name in args.only.split(","):
        if cached(name) is not None and not args.force:
            log(f"{name}: cached, skipped")
            continue
        build(name, data, epochs=args.epochs, log=log, shift=args.shift)


if __name__ == "__main__":
    sys.exit(main())
