"""The IF neuron over T steps in torch, with a surrogate gradient for the spike.

Forward, in the float32 operation order of the ONNX function
(:func:`onnx_rmpe.runtime.neurons.if_function`), on an input ``[T*N, ...]`` (time merged
into the batch, step-major)::

    v(0) = phi * theta + v_init
    m(t) = v(t-1) + x(t);   s(t) = [m(t) >= theta];   out(t) = theta * s(t)
    v(t) = m(t) - out(t)

so a graph written by ``convert`` runs in torch with the same spikes as in onnxruntime
(up to the float rounding of a differently ordered convolution). Backward replaces the
derivative of the step ``s = H(m - theta)`` by a triangle of half-width ``theta``::

    ds/dm = -ds/dtheta = max(0, 1 - |m - theta| / theta) / theta

(the surrogate of Esser et al. 2016 / Bellec et al. 2018, scaled to the threshold), so
``theta``, ``v_init`` and the weights before the neuron receive gradients through all T
steps (backpropagation through time).
"""

from __future__ import annotations

import torch


class SpikeFunction(torch.autograd.Function):
    """``H(m - theta)`` (1 where ``m >= theta``) with the triangle surrogate gradient."""

    @staticmethod
    def forward(ctx, m: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(m, theta)
        return (m >= theta).to(m.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        m, theta = ctx.saved_tensors
        sg = torch.clamp(1 - (m - theta).abs() / theta, min=0) / theta
        g = grad * sg
        grad_theta = None
        if ctx.needs_input_grad[1]:
            grad_theta = (-g).sum_to_size(theta.shape) if theta.dim() else -g.sum()
        return g, grad_theta


def if_neuron(x: torch.Tensor, theta: torch.Tensor, v_init: torch.Tensor, *, T: int,
              phi: float = 0.5) -> torch.Tensor:
    """IF neuron outputs ``theta * s(t)`` for an input ``[T*N, ...]`` (see module docstring)."""
    steps = x.reshape(T, x.shape[0] // T, *x.shape[1:])
    v = theta * torch.tensor(phi, dtype=x.dtype) + v_init
    out = []
    for t in range(T):
        m = v + steps[t]
        spike = SpikeFunction.apply(m, theta) * theta
        v = m - spike
        out.append(spike)
    return torch.stack(out).reshape(x.shape)


def if_op(inputs: list, attrs: dict) -> torch.Tensor:
    """Interpreter handler of ``onnx_rmpe::IFNeuron(x, theta, v_init)``."""
    return if_neuron(inputs[0], inputs[1], inputs[2], T=int(attrs["T"]),
                     phi=float(attrs.get("phi", 0.5)))


def cumsum_op(inputs: list, attrs: dict) -> torch.Tensor:
    """ONNX ``CumSum`` (``exclusive`` and ``reverse`` as the specification defines them)."""
    x, axis = inputs[0], int(inputs[1].reshape(-1)[0])
    if attrs.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, axis)
    if attrs.get("exclusive", 0):
        y = y - x
    return y.flip(axis) if attrs.get("reverse", 0) else y


__all__ = ["SpikeFunction", "cumsum_op", "if_neuron", "if_op"]
