"""The model-zoo families of ``benchmarks/family_nets.py`` in miniature (issue 16).

ResNet-18-, SqueezeNet-, ShuffleNet-, MobileNetV2- and DenseNet-like nets with tiny widths
and random weights (BatchNormalization statistics randomised too, so folding them is not a
no-op), exported by torch's TorchScript exporter (``dynamo=False``) exactly as the
benchmark nets are: each converts, its SNN passes the full checker, and the SNN's output
approaches the clip ANN's as T grows. Random weights make top-1 meaningless, so the check
is the distance ``|y_snn - y_ann| / |y_ann - mean class score|`` of the running output
after t steps of one uncalibrated SNN (the output of the SNN with t steps).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_rmpe.calibration import CLIP_LEVELS, qcfs_with_levels
from onnx_rmpe.conversion import convert
from tests.helpers import export_torch, run

torch = pytest.importorskip("torch")
nn = torch.nn

SIZE = 16          # input 1 x 16 x 16
T_MAX = 32


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
        act: type | None = nn.ReLU) -> list:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return layers + ([act()] if act is not None else [])


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*cbr(cin, cout, 3, stride), *cbr(cout, cout, act=None))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            *cbr(cin, cout, 1, stride, act=None))

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class Fire(nn.Module):
    def __init__(self, cin: int, s: int, e: int) -> None:
        super().__init__()
        self.s = nn.Sequential(nn.Conv2d(cin, s, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(s, e, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(s, e, 3, padding=1), nn.ReLU())

    def forward(self, x):
        s = self.s(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


class Shuffle(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int = 2) -> None:
        super().__init__()
        branch = cout - cin if stride == 2 else cout
        self.groups = groups
        self.a = nn.Sequential(*cbr(cin, branch // 2, 1, groups=groups))
        self.b = nn.Sequential(*cbr(branch // 2, branch // 2, 3, stride, branch // 2, None),
                               *cbr(branch // 2, branch, 1, groups=groups, act=None))
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x):
        y = self.a(x)
        _, c, h, w = y.shape
        y = y.reshape(-1, self.groups, c // self.groups, h, w).transpose(1, 2)
        y = self.b(y.reshape(-1, c, h, w))
        return torch.relu(x + y if self.pool is None else torch.cat([self.pool(x), y], 1))


class Inverted(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        mid = cin * t
        self.body = nn.Sequential(*cbr(cin, mid, 1, act=nn.ReLU6),
                                  *cbr(mid, mid, 3, stride, mid, nn.ReLU6),
                                  *cbr(mid, cout, 1, act=None))
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.res else self.body(x)


class Dense(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                                  nn.Conv2d(cin, 2 * growth, 1, bias=False),
                                  nn.BatchNorm2d(2 * growth), nn.ReLU(),
                                  nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def head(c: int) -> list:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]


FAMILIES = {
    "resnet18": lambda: nn.Sequential(*cbr(1, 4, stride=2), Basic(4, 4, 1), Basic(4, 8, 2),
                                      Basic(8, 8, 1), Basic(8, 12, 2), *head(12)),
    "squeezenet": lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), Fire(8, 4, 8),
        Fire(16, 4, 8), nn.Conv2d(16, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten()),
    "shufflenet": lambda: nn.Sequential(*cbr(1, 8, stride=2), Shuffle(8, 16, 2),
                                        Shuffle(16, 16, 1), *head(16)),
    "mobilenetv2": lambda: nn.Sequential(*cbr(1, 8, stride=2, act=nn.ReLU6),
                                         Inverted(8, 8, 1, 2), Inverted(8, 12, 2, 2),
                                         Inverted(12, 12, 1, 2), *head(12)),
    "densenet": lambda: nn.Sequential(*cbr(1, 8, stride=2), Dense(8, 4), Dense(12, 4),
                                      nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2),
                                      Dense(8, 4), nn.BatchNorm2d(12), nn.ReLU(), *head(12)),
}


def family_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Family ``name`` with random weights and random BatchNormalization statistics."""
    torch.manual_seed(seed)
    net = FAMILIES[name]()
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.8 + 0.4 * torch.rand(c, generator=gen)
            m.bias.data = 0.1 * torch.randn(c, generator=gen)
            m.running_mean = 0.1 * torch.randn(c, generator=gen)
            m.running_var = 0.8 + 0.4 * torch.rand(c, generator=gen)
    x = np.zeros((1, 1, SIZE, SIZE), np.float32)
    return export_torch(net.eval(), x)


def distances(model: onnx.ModelProto, x: np.ndarray, steps) -> list[float]:
    """Distance of the uncalibrated SNN's running output after each of ``steps`` to the clip
    ANN's; also runs the full checker on the SNN."""
    result = convert(model, T=T_MAX, calib=x, rmpe=False, thresholds="percentile", threads=1)
    onnx.checker.check_model(result.snn, full_check=True)
    want = run(qcfs_with_levels(result.qcfs, CLIP_LEVELS), x)[0].reshape(len(x), -1)
    name = result.snn.graph.output[0].name
    per_step = run(result.snn, x, [f"{name}_per_step"])[0].reshape(T_MAX, len(x), -1)
    scale = np.linalg.norm(want - want.mean(-1, keepdims=True))
    return [float(np.linalg.norm(per_step[t - 1] - want) / scale) for t in steps]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_net_converts_and_error_falls_with_T(name):
    """Each family converts (Concat, channel shuffle, grouped/depthwise conv, ReLU6, BN
    before ReLU on a Concat, a ReLU on the logits) and its SNN approaches the clip ANN:
    the distance at T=32 is under half of that at T=4 and below 0.1 (measured: ratios 0.06
    to 0.18, distances 0.002 to 0.008)."""
    x = np.random.default_rng(0).random((16, 1, SIZE, SIZE)).astype(np.float32)
    err4, err32 = distances(family_model(name), x, (4, T_MAX))
    assert err32 < 0.5 * err4, (err4, err32)
    assert err32 < 0.1, (err4, err32)
