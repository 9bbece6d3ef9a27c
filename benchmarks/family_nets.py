"""Small versions of the ONNX model-zoo families, trained on Fashion-MNIST (issue 16).

Five architectures in torch, each exported with ``torch.onnx.export(..., dynamo=False)``
through :func:`fashion_nets.export` (input ``input`` [N, 1, 28, 28] float32 = pixels / 255,
output ``logits`` [N, 10], dynamic batch) and cached as
``~/.cache/onnx-rmpe-bench/family_<name>.onnx`` + ``.json``:

- ``resnet18``: ResNet-18-like: stem Conv/2-BN-ReLU 8 + AvgPool (28 -> 7), 4 stages x 2
  basic blocks (8, 16/2, 32/2, 64/2; 1x1-conv shortcuts where the shape changes), GAP, FC;
- ``squeezenet``: SqueezeNet-1.1-like: Conv/2-BN-ReLU 16 + MaxPool 3/2, Fire modules (squeeze
  1x1, expand 1x1 and 3x3, Concat) 8/16+16, 8/16+16, MaxPool 3/2, 16/32+32, 16/32+32, classifier
  Conv 1x1 10 + ReLU + GAP (the zoo's ReLU on the logits); BN after the other convs;
- ``shufflenet``: ShuffleNet-v1-like (groups 2): stem Conv/2-BN-ReLU 16, 5 units of
  grouped 1x1 conv + BN + ReLU, channel shuffle (Reshape-Transpose-Reshape), depthwise 3x3
  + BN, grouped 1x1 conv + BN, then Add (stride 1) or Concat with a 3x3/2 AvgPool of the
  input (stride 2), ReLU; GAP, FC 10;
- ``mobilenetv2``: MobileNetV2-like: stem Conv/2-BN-ReLU6 16, 5 inverted residuals (expand
  1x1 + BN + ReLU6, depthwise 3x3 + BN + ReLU6, linear projection 1x1 + BN, Add when the
  shape holds), Conv 1x1 96 + BN + ReLU6, GAP, FC 10;
- ``densenet``: DenseNet-like: stem Conv/2-BN-ReLU 16 + AvgPool (28 -> 7), two dense blocks of 3
  bottleneck layers (BN-ReLU-Conv1x1 16-BN-ReLU-Conv3x3 8, Concat), a transition
  (BN-ReLU-Conv1x1 + AvgPool) after each, final BN-ReLU, GAP, FC 10.

All are scaled so that 3 epochs train in minutes on one shared core: the stems downsample
early as the ImageNet originals do (ResNet/DenseNet by 4), widths are narrow.

Recipe: :func:`fashion_nets.train` (AdamW, one-cycle max lr 4e-3, batch 256, random
horizontal flip, seed 0), 3 epochs on all 60k training images, torch threads 1.

Usage::

    python benchmarks/family_nets.py [--only resnet18,densenet] [--epochs 3] [--force]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_nets import (  # noqa: E402
    CACHE,
    DATA,
    Residual,
    load_fashion,
    train_and_cache,
)

EPOCHS = 3
PREFIX = "family_"


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
         act: type[nn.Module] | None = nn.ReLU) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return layers + ([act()] if act is not None else [])


# --------------------------------------------------------------------------- ResNet-18
def resnet18_like(widths: tuple[int, ...] = (8, 16, 32, 64)) -> nn.Module:
    """Stem Conv/2-BN-ReLU + AvgPool (28 -> 7, ResNet-18's /4), 4 stages of 2 basic blocks
    (strides 1, 2, 2, 2), GAP, FC 10."""
    layers: list[nn.Module] = [*_cbr(1, widths[0], stride=2), nn.AvgPool2d(2)]
    cin = widths[0]
    for i, w in enumerate(widths):
        layers += [Residual(cin, w, 1 if i == 0 else 2), Residual(w, w, 1)]
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- SqueezeNet
class Fire(nn.Module):
    """Squeeze 1x1 + BN + ReLU, then expand 1x1 and 3x3 (+ BN + ReLU each), concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(*_cbr(cin, squeeze, 1))
        self.e1 = nn.Sequential(*_cbr(squeeze, expand, 1))
        self.e3 = nn.Sequential(*_cbr(squeeze, expand, 3))

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


def squeezenet_like(c: int = 16) -> nn.Module:
    """Conv/2-BN-ReLU, MaxPool 3/2, Fire x2, MaxPool 3/2, Fire x2, Conv 1x1 10 + ReLU, GAP.

    SqueezeNet has no BatchNormalization; without it this small copy did not train in 3
    epochs (42 % test accuracy after 2), so every conv but the classifier has one."""
    return nn.Sequential(
        *_cbr(1, c, stride=2), nn.MaxPool2d(3, 2, 1),
        Fire(c, c // 2, c), Fire(2 * c, c // 2, c), nn.MaxPool2d(3, 2, 1),
        Fire(2 * c, c, 2 * c), Fire(4 * c, c, 2 * c),
        nn.Conv2d(4 * c, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


# --------------------------------------------------------------------------- ShuffleNet
class ShuffleUnit(nn.Module):
    """ShuffleNet-v1 unit: gconv 1x1, shuffle, dw 3x3, gconv 1x1; Add or Concat(AvgPool)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 2) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        branch = cout - cin if stride == 2 else cout
        mid = branch // 2
        self.a = nn.Sequential(*_cbr(cin, mid, 1, groups=groups))
        self.b = nn.Sequential(*_cbr(mid, mid, 3, stride, groups=mid, act=None),
                               *_cbr(mid, branch, 1, groups=groups, act=None))
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.a(x)
        _, c, h, w = y.shape
        y = y.reshape(-1, self.groups, c // self.groups, h, w).transpose(1, 2)
        y = self.b(y.reshape(-1, c, h, w))
        if self.pool is None:
            return self.act(x + y)
        return self.act(torch.cat([self.pool(x), y], 1))


def shufflenet_like() -> nn.Module:
    """Stem Conv/2-BN-ReLU 16, units 48/2, 48, 96/2, 96, 96, GAP, FC 10."""
    layers: list[nn.Module] = _cbr(1, 16, stride=2)
    cin = 16
    for cout, stride in ((48, 2), (48, 1), (96, 2), (96, 1), (96, 1)):
        layers.append(ShuffleUnit(cin, cout, stride))
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """Expand 1x1 + ReLU6, depthwise 3x3 + ReLU6, linear projection; Add when shapes hold."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers = _cbr(cin, mid, 1, act=nn.ReLU6) if expand != 1 else []
        self.body = nn.Sequential(*layers, *_cbr(mid, mid, 3, stride, mid, nn.ReLU6),
                                  *_cbr(mid, cout, 1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenetv2_like() -> nn.Module:
    """Stem Conv/2 16, inverted residuals (t, c, s) = (1,8,1) (3,16,2) (3,16,1) (3,24,2)
    (3,24,1), Conv 1x1 96 + ReLU6, GAP, FC 10."""
    layers: list[nn.Module] = _cbr(1, 16, stride=2, act=nn.ReLU6)
    cin = 16
    for t, c, s in ((1, 8, 1), (3, 16, 2), (3, 16, 1), (3, 24, 2), (3, 24, 1)):
        layers.append(InvertedResidual(cin, c, s, t))
        cin = c
    layers += [*_cbr(cin, 96, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(96, 10)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- DenseNet
class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (2 * growth)-BN-ReLU-Conv3x3 (growth), concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth), nn.ReLU(),
            nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def densenet_like(stem: int = 16, growth: int = 8, layers: int = 3) -> nn.Module:
    """Stem Conv/2-BN-ReLU + AvgPool (28 -> 7), 2 x (dense block + transition), BN-ReLU,
    GAP, FC."""
    mods: list[nn.Module] = [*_cbr(1, stem, stride=2), nn.AvgPool2d(2)]
    c = stem
    for _ in range(2):
        for _ in range(layers):
            mods.append(DenseLayer(c, growth))
            c += growth
        mods += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                 nn.AvgPool2d(2)]
        c //= 2
    mods += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
             nn.Linear(c, 10)]
    return nn.Sequential(*mods)


#: name -> (description, constructor)
FAMILIES: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "resnet18": ("ResNet-18-like, 4 stages x 2 basic blocks", resnet18_like),
    "squeezenet": ("SqueezeNet-like, Fire modules (Concat), ReLU on the logits",
                   squeezenet_like),
    "shufflenet": ("ShuffleNet-like, group conv + channel shuffle", shufflenet_like),
    "mobilenetv2": ("MobileNetV2-like, inverted residuals, ReLU6, depthwise",
                    mobilenetv2_like),
    "densenet": ("DenseNet-like, dense blocks (Concat), transition AvgPool", densenet_like),
}


def cache_name(name: str) -> str:
    """The cache entry (``fashion_nets.cached`` name) of family ``name``."""
    return PREFIX + name


def build(name: str, data, *, epochs: int = EPOCHS, log=print) -> dict:
    """Train, export and cache family ``name`` (``fashion_nets.train_and_cache``)."""
    desc, make = FAMILIES[name]
    return train_and_cache(cache_name(name), desc, make, data, epochs=epochs, log=log)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(FAMILIES), help="comma-separated family names")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    p.add_argument("--data", default=DATA)
    args = p.parse_args()
    torch.set_num_threads(1)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    data = load_fashion(args.data)
    for name in args.only.split(","):
        if (CACHE / f"{cache_name(name)}.onnx").exists() and not args.force:
            log(f"{name}: cached, skipped")
            continue
        build(name, data, epochs=args.epochs, log=log)


if __name__ == "__main__":
    sys.exit(main())
