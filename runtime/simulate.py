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


#: Neurons simulated together over all T steps (float32 elements): a block's potential
#: and spike buffers stay in the CPU cache across the steps, about twice as fast as whole
#: ``[N, ...]`` steps streamed through memory; the arithmetic is the same element by element.
BLOCK = 1 << 17


def simulate_if(x_tn: np.ndarray, theta: np.ndarray | float, v_init: np.ndarray | float = 0.0,
                phi: float = DEFAULT_PHI) -> tuple[np.ndarray, np.ndarray]:
    """Numpy IF dynamics on ``[T, N, ...]`` input, bit-identical to the ONNX function.

    Returns ``(spikes, v_T)``: the boolean spike train ``[T, N, ...]`` (the output at step
    t is ``theta * spikes[t]``) and the residual membrane potential ``[N, ...]``. Runs in
    blocks of ``BLOCK`` neurons, all T steps per block (each neuron's arithmetic is that of
    the Scan body, so the result does not depend on the blocks).
    """
    x_tn = np.asarray(x_tn, np.float32)
    T, shape = x_tn.shape[0], x_tn.shape[1:]
    v = _start(theta, v_init, phi, shape).reshape(-1)
    spikes = np.empty((T, v.size), bool)
    theta32 = np.asarray(theta, np.float32)
    if theta32.size > 1:  # per neuron or channel: one value per flat neuron
        theta32 = np.broadcast_to(theta32, shape).reshape(-1)
    _run(x_tn.reshape(T, -1), theta32, v, spikes)
    return spikes.reshape(x_tn.shape), v.reshape(shape)


def count_if(x_tn: np.ndarray, thetas: list[float], phi: float = DEFAULT_PHI,
             keep: tuple[int, ...] = ()) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """Spike counts ``N(T)`` ``[N, ...]`` of scalar-threshold IF neurons, one per threshold
    in ``thetas`` (``v_init = 0``), on the same input, read block by block once for all.

    Each count equals ``simulate_if(x_tn, theta, 0.0, phi)[0].sum(0)`` exactly; the spike
    trains of the thresholds whose indices are in ``keep`` are returned too (by index).
    """
    x_tn = np.asarray(x_tn, np.float32)
    T, shape = x_tn.shape[0], x_tn.shape[1:]
    flat = x_tn.reshape(T, -1)
    n = flat.shape[1]
    dtype = np.uint8 if T < 256 else np.int32
    counts = [np.zeros(n, dtype) for _ in thetas]
    kept = {k: np.empty((T, n), bool) for k in keep}
    fire = np.empty((T, min(n, BLOCK)), bool)
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        for k, theta in enumerate(thetas):
            theta32 = np.float32(theta)
            v = _start(theta32, 0.0, phi, (b - a,))
            out = kept[k][:, a:b] if k in kept else fire[:, : b - a]
            _run(flat[:, a:b], theta32, v, out)
            np.add.reduce(out, axis=0, dtype=dtype, out=counts[k][a:b])
    return ([c.reshape(shape) for c in counts],
            {k: s.reshape(x_tn.shape) for k, s in kept.items()})


def _start(theta, v_init, phi: float, shape: tuple[int, ...]) -> np.ndarray:
    """``v(0) = phi * theta + v_init`` as a writable float32 array of ``shape``."""
    theta32 = np.asarray(theta, np.float32)
    v = np.asarray(theta32 * np.float32(phi) + np.asarray(v_init, np.float32), np.float32)
    return np.broadcast_to(v, shape).astype(np.float32, copy=True)


def _run(x: np.ndarray, theta32: np.ndarray, v: np.ndarray, spikes: np.ndarray) -> None:
    """IF steps in place on flat ``x [T, n]``, ``v [n]``, ``spikes [T, n]`` (bool), block by
    block. ``theta32``: one value, or one per neuron (``[n]``)."""
    T, n = x.shape
    per_neuron = theta32.size > 1
    th = theta32 if per_neuron else np.asarray(theta32, np.float32).reshape(())
    out = np.empty(min(n, BLOCK), np.float32)
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        vb, ob, tb = v[a:b], out[: b - a], th[a:b] if per_neuron else th
        for t in range(T):  # the Scan body's float32 operations, in its order
            np.add(vb, x[t, a:b], out=vb)
            np.greater_equal(vb, tb, out=spikes[t, a:b])
            np.multiply(spikes[t, a:b], tb, out=ob)
            np.subtract(vb, ob, out=vb)


#: The former names (``runtime/neurons.py``), kept for callers.
qcfs_reference = simulate_qcfs
if_reference = simulate_if

__all__ = ["BLOCK", "count_if", "if_reference", "qcfs_reference", "simulate_if",
           "simulate_qcfs"]
