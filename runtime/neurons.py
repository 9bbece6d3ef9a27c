"""Neuron definitions as ONNX model-local functions in the ``onnx_rmpe`` domain.

QCFS (quantized clip-floor-shift activation), one scalar threshold ``lam`` per layer::

    h(z) = lam * clip(floor(z * L / lam + phi) / L, 0, 1)

IFNeuron (integrate-and-fire, reset by subtraction), over steps t = 1..T, with time
merged into the batch (input ``x`` is ``[T*N, ...]``, time-major)::

    v(0) = phi * theta + v_init
    m(t) = v(t-1) + x(t)
    s(t) = [m(t) >= theta]
    v(t) = m(t) - theta * s(t)
    out(t) = theta * s(t)

The IF body reshapes ``[T*N, ...]`` to ``[T, N, ...]`` and runs a ``Scan`` over time
with the membrane potential as state; onnxruntime inlines the function.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

DOMAIN = "onnx_rmpe"
DOMAIN_VERSION = 1
QCFS_OP = "QCFS"
IF_OP = "IFNeuron"
DEFAULT_PHI = 0.5


def _const(out: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [out], value=onnx.numpy_helper.from_array(value, out))


def qcfs_function(opset: int, levels: int, phi: float = DEFAULT_PHI) -> onnx.FunctionProto:
    """The QCFS activation as a function: inputs ``(x, lam)``.

    ``levels`` and ``phi`` are baked into the body (one value per model): onnx's full
    checker cannot infer shapes through attribute references. The nodes still carry them
    as attributes, so a model states its own settings.
    """
    nodes = [
        _const("L", np.array(levels, np.float32)),
        _const("phi", np.array(phi, np.float32)),
        _const("zero", np.array(0.0, np.float32)),
        _const("one", np.array(1.0, np.float32)),
        helper.make_node("Mul", ["x", "L"], ["xL"]),
        helper.make_node("Div", ["xL", "lam"], ["u"]),
        helper.make_node("Add", ["u", "phi"], ["u_shift"]),
        helper.make_node("Floor", ["u_shift"], ["q"]),
        helper.make_node("Div", ["q", "L"], ["q_norm"]),
        helper.make_node("Clip", ["q_norm", "zero", "one"], ["q_clip"]),
        helper.make_node("Mul", ["q_clip", "lam"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN, QCFS_OP, ["x", "lam"], ["y"], nodes,
        [helper.make_opsetid("", opset)], attributes=["levels", "phi"],
    )


def _if_scan_body() -> onnx.GraphProto:
    """One IF step: ``(v, x_t) -> (v', out_t)``; ``theta`` comes from the outer scope."""
    nodes = [
        helper.make_node("Add", ["v_in", "x_t"], ["m"]),
        helper.make_node("GreaterOrEqual", ["m", "theta"], ["fire"]),
        helper.make_node("Cast", ["fire"], ["fire_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["fire_f", "theta"], ["out_t"]),
        helper.make_node("Sub", ["m", "out_t"], ["v_out"]),
    ]
    f32 = TensorProto.FLOAT
    return helper.make_graph(
        nodes, "if_step",
        [helper.make_tensor_value_info("v_in", f32, None),
         helper.make_tensor_value_info("x_t", f32, None)],
        [helper.make_tensor_value_info("v_out", f32, None),
         helper.make_tensor_value_info("out_t", f32, None)],
    )


def if_function(opset: int, T: int, phi: float = DEFAULT_PHI) -> onnx.FunctionProto:
    """The IF neuron: inputs ``(x, theta, v_init)``, output ``y``; ``T``, ``phi`` baked in."""
    nodes = [
        _const("T_vec", np.array([T], np.int64)),
        _const("phi", np.array(phi, np.float32)),
        _const("ax0", np.array([0], np.int64)),
        _const("one_i", np.array([1], np.int64)),
        _const("big", np.array([np.iinfo(np.int64).max], np.int64)),
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Slice", ["shp", "ax0", "one_i"], ["TN"]),
        helper.make_node("Slice", ["shp", "one_i", "big"], ["rest"]),
        helper.make_node("Div", ["TN", "T_vec"], ["N"]),
        helper.make_node("Concat", ["T_vec", "N", "rest"], ["shp_tn"], axis=0),
        helper.make_node("Concat", ["N", "rest"], ["shp_n"], axis=0),
        helper.make_node("Reshape", ["x", "shp_tn"], ["x_tn"]),
        helper.make_node("Mul", ["theta", "phi"], ["v_half"]),
        helper.make_node("Add", ["v_half", "v_init"], ["v_start"]),
        helper.make_node("Expand", ["v_start", "shp_n"], ["v0"]),
        helper.make_node("Scan", ["v0", "x_tn"], ["v_T", "y_tn"], num_scan_inputs=1,
                         body=_if_scan_body()),
        helper.make_node("Reshape", ["y_tn", "shp"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN, IF_OP, ["x", "theta", "v_init"], ["y"], nodes,
        [helper.make_opsetid("", opset)], attributes=["T", "phi"],
    )


def qcfs_reference(z: np.ndarray, lam: float, levels: int, phi: float = DEFAULT_PHI) -> np.ndarray:
    """Numpy reference of QCFS, in the same float32 operation order as the ONNX function."""
    z = np.asarray(z, np.float32)
    lam32, L = np.float32(lam), np.float32(levels)
    q = np.floor(z * L / lam32 + np.float32(phi)) / L
    return (np.clip(q, np.float32(0), np.float32(1)) * lam32).astype(np.float32)


def if_reference(x_tn: np.ndarray, theta: np.ndarray | float, v_init: np.ndarray | float = 0.0,
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


def function_for(op_type: str, opset: int, attrs: dict[str, float | int]) -> onnx.FunctionProto:
    """The function definition of ``op_type`` for the (model-wide) attribute values ``attrs``."""
    phi = float(attrs.get("phi", DEFAULT_PHI))
    if op_type == QCFS_OP:
        return qcfs_function(opset, int(attrs["levels"]), phi)
    if op_type == IF_OP:
        return if_function(opset, int(attrs["T"]), phi)
    raise KeyError(op_type)
