"""Input normalization inside the model, folded into the first weighted layer for NIR.

A model may start with ``(x - mean) / std`` (``Sub``/``Add``/``Mul``/``Div`` by constants).
NIR has no elementwise affine node the importers know, so the normalization is folded::

    z = x * s + h                              (s, h per input element, from the constants)
    Gemm:  W z + b      = (W * s) x + (b + W h)
    Conv:  Conv_W(z) + b = Conv_{W * s_c}(x) + (b + sum_{c,k} W[:, c, k] h_c)

The Conv form needs ``s`` and ``h`` constant per channel, and ``h = 0`` or no zero padding
(a padded border sees ``0`` in ``z``, which is not ``0 * s + h`` in ``x``). With a shift
before a zero-padded Conv the normalization stays a layer of its own: a 1x1 ``Conv2d``
with weights ``diag(s)`` and bias ``h`` (exact: one product and one sum per element).

Invariant: the folded layer computes the same function of the raw input, in real
arithmetic (float rounding of the folded weights aside).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class FoldError(ValueError):
    """The normalization cannot be folded into this layer (the message says why)."""


class PaddedShift(FoldError):
    """A shift before a zero-padded Conv: keep the normalization as a 1x1 Conv layer."""


@dataclass
class InputAffine:
    """``z = x * scale + shift`` elementwise, arrays of the per-sample input shape."""

    scale: np.ndarray
    shift: np.ndarray

    @classmethod
    def identity(cls, shape: tuple) -> InputAffine:
        return cls(np.ones(shape, np.float64), np.zeros(shape, np.float64))

    def then(self, op: str, const: np.ndarray, data_first: bool) -> InputAffine:
        """The affine map after ``op(z, const)`` (or ``op(const, z)``)."""
        shape = self.scale.shape
        k = np.asarray(const, np.float64)
        if k.ndim == len(shape) + 1:
            k = k[0]
        k = np.broadcast_to(k, shape)
        if op == "Add":
            return InputAffine(self.scale, self.shift + k)
        if op == "Sub":
            if data_first:
                return InputAffine(self.scale, self.shift - k)
            return InputAffine(-self.scale, k - self.shift)
        if op == "Mul":
            return InputAffine(self.scale * k, self.shift * k)
        if op == "Div" and data_first:
            return InputAffine(self.scale / k, self.shift / k)
        raise FoldError(f"{op} of the input by a constant cannot be folded")

    def flattened(self) -> InputAffine:
        return InputAffine(self.scale.reshape(-1), self.shift.reshape(-1))

    def fold_affine(self, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``W (x s + h) + b`` as ``W' x + b'`` (``w`` is ``[out, in]``)."""
        if self.scale.ndim != 1:
            raise FoldError("the normalized input reaches a Gemm/MatMul without a Flatten")
        w64 = w.astype(np.float64)
        return ((w64 * self.scale[None, :]).astype(np.float32),
                (b.astype(np.float64) + w64 @ self.shift).astype(np.float32))

    def fold_conv(self, w: np.ndarray, b: np.ndarray, pads) -> tuple[np.ndarray, np.ndarray]:
        """``Conv_W(x s + h) + b`` as ``Conv_{W'}(x) + b'`` (per-channel ``s``, ``h``)."""
        if self.scale.ndim != 3:
            raise FoldError("the normalized input reaches a Conv without a [C, H, W] shape")
        s = self.scale[:, :1, :1]
        h = self.shift[:, :1, :1]
        if not (np.all(self.scale == s) and np.all(self.shift == h)):
            raise FoldError("the normalization is not constant per channel")
        if np.any(h != 0) and any(pads):
            raise PaddedShift("a shift (x - mean) before a zero-padded Conv")
        w64 = w.astype(np.float64)
        w_new = w64 * s.reshape(1, -1, 1, 1)
        b_new = b.astype(np.float64) + (w64.sum(axis=(2, 3)) * h.reshape(1, -1)).sum(axis=1)
        return w_new.astype(np.float32), b_new.astype(np.float32)

    def pointwise(self) -> tuple[np.ndarray, np.ndarray]:
        """Weights ``[C, C, 1, 1]`` and bias ``[C]`` of the 1x1 Conv computing ``x s + h``."""
        s = self.scale[:, 0, 0].astype(np.float32)
        h = self.shift[:, 0, 0].astype(np.float32)
        return (np.diag(s)[:, :, None, None]).astype(np.float32), h
