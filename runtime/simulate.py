"""The numpy simulator of the neurons: bit-identical to their ONNX functions.

Calibration (:mod:`onnx_rmpe.calibration.sweep`) and the threshold search run the IF
neuron of one layer here, on cached input currents, instead of in onnxruntime; tests use
both as references. The float32 operations and their order are those of the ONNX
function bodies in :mod:`onnx_rmpe.runtime.neurons`, so spikes agree bit for bit.
(``qcfs_reference`` and ``if_reference`` are the former names, still importable from
:mod:`onnx_rmpe.runtime.neurons`.)
"""

from __future__ import annotations

import numpy as np

from onnx_rmpe.ops import DEFAULT_PHI


def simulate_qcfs(z: np.ndarray, lam: float, levels: int, phi: float = DEFAULT_PHI) -> np.ndarray:
    """Numpy reference of QCFS, in the same float32 operation order as the ONNX function."""
    z = np.asarray(z, np.float32)
    lam32, L = np.float32(lam), np.float32(levels)
    q = np.floor(z * L / lam32 + np.float32(phi)) / L
    return (np.clip(q, np.float32(0), np.float32(1)) * lam32).astype(np.float32)


def simulate_if(x_tn: np.ndarray, theta: np.ndarray | float, v_init: np.ndarray | float = 0.0,
                 phi: float = DEFAULT_PHI) -> tuple[np.ndarray, np.ndarray]:
    """Numpy IF dynamics on ``[T, N, ...]`` input, bit-identical to the ONNX function.

    Returns ``(spikes, v_T)``: the boolean spike train ``[T, N, ...]`` (the output at step
    t is ``theta * spikes[t]``) and the residual membrane potential ``[N, ...]``.
    """
    theta32 = np.asarray(theta, np.float32)
    v = np.asarray(theta32 * np.float32(phi) + np.asarray(v_init, np.float32), np.float32)
    v = np.broadcast_to(v, x_tn.shape[1:]).astype(np.float32, copy=True)
    spikes = np.empty(x_tn.shape, bool)
    out = np.empty_like(v)
    for t, x_t in enumerate(x_tn):  # in place, the same float32 operations as the Scan body
        np.add(v, x_t, out=v)
        np.greater_equal(v, theta32, out=spikes[t])
        np.multiply(spikes[t], theta32, out=out)
        np.subtract(v, out, out=v)
    return spikes, v


#: The former names (``runtime/neurons.py``), kept for callers.
qcfs_reference = simulate_qcfs
if_reference = simulate_if

__all__ = ["if_reference", "qcfs_reference", "simulate_if", "simulate_qcfs"]
