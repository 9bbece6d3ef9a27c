"""The QCFS activation as a trainable torch module, exportable as ``onnx_rmpe::QCFS``.

Forward, in the float32 operation order of the ONNX function
(:func:`onnx_rmpe.runtime.neurons.qcfs_function`)::

    q = floor(x * L / lam + phi) / L
    y = clamp(q, 0, 1) * lam

Backward is that of Bu et al. 2022's ``lam * floor_ste(clamp(x / lam, 0, 1) * L + phi) / L``
(clip first, straight-through floor: ``d floor(u) / du = 1``)::

    dy/dx   = m                      m = [0 <= x <= lam]
    dy/dlam = m * (q - x / lam) + [x > lam]        q = clamp(floor(x L / lam + phi) / L, 0, 1)

Measured (benchmarks/finetune_fashion.py, 12-epoch VGG-like net, L=4, 1 epoch x 10k, same
seed): QCFS 89.60 % with this gradient, 88.43 % with the earlier mask ``[0 <= q <= 1]``
after the floor (which lets inputs up to ``lam (1 + phi / L)`` and down to
``-lam phi / L`` through and pulls ``lam`` down for inputs just above it).

``lam`` is one scalar per layer and is trained; ``L`` (levels) and ``phi`` are fixed.
Exported with ``torch.onnx.export(..., dynamo=False)`` the module becomes one node
``onnx_rmpe::QCFS(x, lam)`` with attributes ``levels`` and ``phi``, which
:func:`onnx_rmpe.conversion.convert` turns into IF neurons without recalibrating ``lam``.
"""

from __future__ import annotations

import torch
from torch import nn

from onnx_rmpe.runtime.neurons import DEFAULT_PHI, DOMAIN, QCFS_OP


class QCFSFunction(torch.autograd.Function):
    """``QCFS(x, lam)`` with straight-through floor; ``levels`` and ``phi`` are constants."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor, levels: int, phi: float) -> torch.Tensor:
        L = float(levels)  # Python scalars: computed in x's dtype, as the ONNX function does
        q = torch.floor(x * L / lam + float(phi)) / L
        ctx.save_for_backward(x, lam, q)
        return torch.clamp(q, 0.0, 1.0) * lam

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, lam, q = ctx.saved_tensors
        inside = ((x >= 0) & (x <= lam)).to(grad.dtype)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_lam = None
        if ctx.needs_input_grad[1]:
            local = inside * (torch.clamp(q, 0.0, 1.0) - x / lam) + (x > lam).to(grad.dtype)
            grad_lam = (grad * local).sum().reshape(lam.shape)
        return grad_x, grad_lam, None, None

    @staticmethod
    def symbolic(g, x, lam, levels: int, phi: float):
        out = g.op(f"{DOMAIN}::{QCFS_OP}", x, lam, levels_i=int(levels), phi_f=float(phi))
        out.setType(x.type())
        return out


def qcfs(x: torch.Tensor, lam: torch.Tensor, levels: int, phi: float = DEFAULT_PHI) -> torch.Tensor:
    """Functional QCFS (see the module docstring); differentiable in ``x`` and ``lam``."""
    return QCFSFunction.apply(x, lam, int(levels), float(phi))


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation with a trainable threshold ``lam``.

    Args:
        levels: number of quantization levels ``L`` (the SNN reaches the ANN at T = L).
        lam: initial threshold (``> 0``), for example a high percentile of the ReLU input.
        phi: shift, 0.5 makes the expected conversion error zero.
    """

    def __init__(self, levels: int = 4, lam: float = 8.0, phi: float = DEFAULT_PHI) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        if not lam > 0:
            raise ValueError(f"lam must be positive, got {lam}")
        self.levels = int(levels)
        self.phi = float(phi)
        self.lam = nn.Parameter(torch.tensor(float(lam)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qcfs(x, self.lam, self.levels, self.phi)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, phi={self.phi}, lam={float(self.lam.detach()):.4g}"


def export_opsets() -> dict[str, int]:
    """The ``custom_opsets`` argument for ``torch.onnx.export`` of a model holding QCFS."""
    from onnx_rmpe.runtime.neurons import DOMAIN_VERSION
    return {DOMAIN: DOMAIN_VERSION}
