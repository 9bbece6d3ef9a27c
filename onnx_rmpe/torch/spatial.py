"""Conv and pooling ops for the torch interpreter (see :mod:`onnx_rmpe.torch.ops`).

ONNX ``pads`` are ``[b1..bn, e1..en]``; symmetric pads go to torch directly, asymmetric
ones through an explicit ``F.pad``. ``ceil_mode`` pools follow onnxruntime: the output
size rounds up, but a window may not start in the end padding. AveragePool counts the
explicit padding only with ``count_include_pad=1`` and never the ``ceil_mode`` overhang.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _spatial(attrs: dict, x: Tensor) -> tuple[int, list[int], list[int], list[int], list[int]]:
    """``(dims, kernel, strides, dilations, pads)`` of a Conv or pool on ``x``."""
    n = x.dim() - 2
    kernel = list(attrs.get("kernel_shape", []))
    strides = list(attrs.get("strides", [1] * n))
    dil = list(attrs.get("dilations", [1] * n))
    pads = list(attrs.get("pads", [0] * (2 * n)))
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for i in range(n):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + n] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * (2 * n)
    return n, kernel, strides, dil, pads


def torch_pads(pads: Sequence[int], n: int) -> list[int]:
    """ONNX ``[b1..bn, e1..en]`` -> torch.nn.functional.pad order (last axis first)."""
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def conv(inputs, attrs):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    attrs = {"kernel_shape": list(w.shape[2:]), **attrs}
    n, _, strides, dil, pads = _spatial(attrs, x)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    if pads[:n] == pads[n:]:
        return fn(x, w, b, strides, pads[:n], dil, attrs.get("group", 1))
    return fn(F.pad(x, torch_pads(pads, n)), w, b, strides, 0, dil, attrs.get("group", 1))


def _ceil_extra(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool) -> int:
    """Zeros to add at the end so the last ``ceil_mode`` window fits (0 if floor mode)."""
    span = size + pb + pe - ((k - 1) * d + 1)
    if not ceil or span % s == 0:
        return 0
    out = -(-span // s) + 1
    if (out - 1) * s >= size + pb:  # the last window would start in the end padding
        out -= 1
    return max(0, (out - 1) * s + (k - 1) * d + 1 - (size + pb + pe))


def average_pool(inputs, attrs):
    x = inputs[0]
    n, k, s, d, pads = _spatial(attrs, x)
    ceil, include = bool(attrs.get("ceil_mode", 0)), bool(attrs.get("count_include_pad", 0))
    extra = [_ceil_extra(x.shape[2 + i], k[i], s[i], d[i], pads[i], pads[i + n], ceil)
             for i in range(n)]
    fast = (pads[:n] == pads[n:] and all(p <= kk // 2 for p, kk in zip(pads, k))
            and d == [1] * n and not any(extra) and (include or not any(pads)))
    if fast:
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        return fn(x, k, s, pads[:n], False, include)
    # general form: windowed sums (a depthwise conv with ones) over window counts
    c = x.shape[1]
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    ones = torch.ones((c, 1, *k), dtype=x.dtype, device=x.device)
    full = [p for i in range(n) for p in (pads[i], pads[i + n] + extra[i])]
    order = [v for i in reversed(range(n)) for v in full[2 * i:2 * i + 2]]
    total = conv_fn(F.pad(x, order), ones, None, s, 0, d, c)
    mask = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    if include:  # the explicit padding counts, the ceil_mode overhang does not
        mask = F.pad(mask, torch_pads(pads, n), value=1.0)
        order = [v for i in reversed(range(n)) for v in (0, extra[i])]
    count = conv_fn(F.pad(mask, order), ones[:1], None, s, 0, d)
    return total / count


def max_pool(inputs, attrs):
    x = inputs[0]
    n, k, s, d, pads = _spatial(attrs, x)
    ceil = bool(attrs.get("ceil_mode", 0))
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
    if pads[:n] == pads[n:] and all(p <= kk // 2 for p, kk in zip(pads, k)):
        return fn(x, k, s, pads[:n], d, ceil)
    extra = [_ceil_extra(x.shape[2 + i], k[i], s[i], d[i], pads[i], pads[i + n], ceil)
             for i in range(n)]
    full = [p for i in range(n) for p in (pads[i], pads[i + n] + extra[i])]
    order = [v for i in reversed(range(n)) for v in full[2 * i:2 * i + 2]]
    return fn(F.pad(x, order, value=float("-inf")), k, s, 0, d, False)


def global_average_pool(inputs, attrs):
    return inputs[0].mean(dim=tuple(range(2, inputs[0].dim())), keepdim=True)


def global_max_pool(inputs, attrs):
    return inputs[0].amax(dim=tuple(range(2, inputs[0].dim())), keepdim=True)
