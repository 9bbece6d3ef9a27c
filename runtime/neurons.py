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

Two bodies compute these dynamics with the same float32 operations in the same order, so
they give bit-identical spikes (node attribute ``form``):

* ``unrolled``: ``Split`` the ``[T*N, ...]`` input into T blocks of ``[N, ...]`` along the
  batch axis, five elementwise ops per step, ``Concat`` back. No reshape to ``[T, N, ...]``
  and no subgraph.
* ``scan`` (the default, :func:`default_form`): reshape to ``[T, N, ...]`` and a ``Scan``
  over time with the membrane potential as state (a graph of constant size for any T).

``IFNeuronChunk`` (the chunked model, :mod:`onnx_rmpe.forms`) runs the same dynamics from
a carried potential: inputs ``(x, theta, v)`` with ``v(0) = v``, outputs ``(y, v(T))``.
onnxruntime inlines the functions either way.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_rmpe.ops import (  # noqa: F401 - re-exported: the vocabulary lives in the ground floor
    DEFAULT_PHI,
    DOMAIN,
    DOMAIN_VERSION,
    IF_CHUNK_OP,
    IF_FORMS,
    IF_OP,
    QCFS_OP,
)
from onnx_rmpe.runtime.simulate import (  # noqa: F401 - the old names of the simulator
    if_reference,
    qcfs_reference,
)


def default_form(T: int) -> str:
    """The IF body chosen when a node does not name one: ``scan`` at every T.

    The unrolled body did not run measurably faster in benchmarks/runtime.py (its Split and
    Concat copies cost what the Scan costs, and onnxruntime still reorders the layout
    around it); the network-unrolled model (:mod:`onnx_rmpe.forms`) is the faster form.
    """
    return "scan"


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


def _if_unrolled_nodes(T: int, stateful: bool = False) -> list[onnx.NodeProto]:
    """``x [T*N, ...] -> y``: Split along the batch axis, T elementwise steps, Concat.

    The start potential is ``v_0`` (an input when ``stateful``); the last is ``v_T``.
    """
    nodes = [] if stateful else [
        helper.make_node("Mul", ["theta", "phi"], ["v_half"]),
        helper.make_node("Add", ["v_half", "v_init"], ["v_0"]),
    ]
    if T == 1:
        steps = ["x"]
    else:
        steps = [f"x_{t}" for t in range(1, T + 1)]
        nodes += [
            _const("T_vec", np.array([T], np.int64)),
            _const("ax0", np.array([0], np.int64)),
            _const("one_i", np.array([1], np.int64)),
            helper.make_node("Shape", ["x"], ["shp"]),
            helper.make_node("Slice", ["shp", "ax0", "one_i"], ["TN"]),
            helper.make_node("Div", ["TN", "T_vec"], ["N"]),
            helper.make_node("Expand", ["N", "T_vec"], ["sizes"]),
            helper.make_node("Split", ["x", "sizes"], steps, axis=0),
        ]
    outs = []
    for t, x_t in enumerate(steps, start=1):  # the Scan body's ops, in the same order
        v, o = f"v_{t - 1}", f"out_{t}"
        nodes += [
            helper.make_node("Add", [v, x_t], [f"m_{t}"]),
            helper.make_node("GreaterOrEqual", [f"m_{t}", "theta"], [f"fire_{t}"]),
            helper.make_node("Cast", [f"fire_{t}"], [f"fire_f_{t}"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"fire_f_{t}", "theta"], [o]),
            helper.make_node("Sub", [f"m_{t}", o], [f"v_{t}"]),
        ]
        outs.append(o)
    if T == 1:
        nodes.append(helper.make_node("Identity", outs, ["y"]))
    else:
        nodes.append(helper.make_node("Concat", outs, ["y"], axis=0))
    if stateful:
        nodes.append(helper.make_node("Identity", [f"v_{T}"], ["v_T"]))
    return nodes


def if_function(opset: int, T: int, phi: float = DEFAULT_PHI,
                form: str | None = None) -> onnx.FunctionProto:
    """The IF neuron: inputs ``(x, theta, v_init)``, output ``y``; ``T``, ``phi`` baked in.

    ``form`` (``unrolled`` or ``scan``, default :func:`default_form`) picks the body; both
    give the same spikes bit for bit.
    """
    form = _check_form(form, T)
    if form == "unrolled":
        nodes = [_const("phi", np.array(phi, np.float32)), *_if_unrolled_nodes(T)]
        return helper.make_function(
            DOMAIN, IF_OP, ["x", "theta", "v_init"], ["y"], nodes,
            [helper.make_opsetid("", opset)], attributes=["T", "phi"],
            attribute_protos=[_form_attr(form)],
        )
    return _if_scan_function(opset, T, phi, stateful=False, form=form)


def if_chunk_function(opset: int, T: int, form: str | None = None) -> onnx.FunctionProto:
    """The IF neuron over one chunk of ``T`` steps with its state carried in and out.

    Inputs ``(x [T*N, ...], theta, v)``, outputs ``(y [T*N, ...], v_next)``: the same
    dynamics as :func:`if_function` started from the potential ``v`` (``[N, ...]`` or
    broadcastable to it) instead of ``phi * theta + v_init``; ``v_next`` is the potential
    after the last step, the next chunk's ``v``.
    """
    form = _check_form(form, T)
    if form == "unrolled":
        return helper.make_function(
            DOMAIN, IF_CHUNK_OP, ["x", "theta", "v_0"], ["y", "v_T"],
            _if_unrolled_nodes(T, stateful=True),
            [helper.make_opsetid("", opset)], attributes=["T", "phi"],
            attribute_protos=[_form_attr(form)],
        )
    return _if_scan_function(opset, T, DEFAULT_PHI, stateful=True, form=form)


def _form_attr(form: str) -> onnx.AttributeProto:
    """``form`` is optional on a node: declared with a default (the body's own form)."""
    return helper.make_attribute("form", form)


def _check_form(form: str | None, T: int) -> str:
    form = form or default_form(T)
    if form not in IF_FORMS:
        raise ValueError(f"unknown IF form '{form}'; choose one of {IF_FORMS}")
    return form


def _if_scan_function(opset: int, T: int, phi: float, stateful: bool,
                      form: str) -> onnx.FunctionProto:
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
    ]
    if not stateful:
        nodes += [helper.make_node("Mul", ["theta", "phi"], ["v_half"]),
                  helper.make_node("Add", ["v_half", "v_init"], ["v_start"])]
    nodes += [
        helper.make_node("Expand", ["v_start", "shp_n"], ["v0"]),
        helper.make_node("Scan", ["v0", "x_tn"], ["v_T", "y_tn"], num_scan_inputs=1,
                         body=_if_scan_body()),
        helper.make_node("Reshape", ["y_tn", "shp"], ["y"]),
    ]
    if stateful:
        return helper.make_function(
            DOMAIN, IF_CHUNK_OP, ["x", "theta", "v_start"], ["y", "v_T"], nodes,
            [helper.make_opsetid("", opset)], attributes=["T", "phi"],
            attribute_protos=[_form_attr(form)],
        )
    return helper.make_function(
        DOMAIN, IF_OP, ["x", "theta", "v_init"], ["y"], nodes,
        [helper.make_opsetid("", opset)], attributes=["T", "phi"],
            attribute_protos=[_form_attr(form)],
    )


def function_for(op_type: str, opset: int, attrs: dict[str, float | int]) -> onnx.FunctionProto:
    """The function definition of ``op_type`` for the (model-wide) attribute values ``attrs``."""
    phi = float(attrs.get("phi", DEFAULT_PHI))
    if op_type == QCFS_OP:
        return qcfs_function(opset, int(attrs["levels"]), phi)
    if op_type == IF_OP:
        form = attrs.get("form")
        form = form.decode() if isinstance(form, bytes) else form
        return if_function(opset, int(attrs["T"]), phi, form)
    if op_type == IF_CHUNK_OP:
        form = attrs.get("form")
        form = form.decode() if isinstance(form, bytes) else form
        return if_chunk_function(opset, int(attrs["T"]), form)
    raise ValueError(f"no ONNX function for op '{op_type}' of domain '{DOMAIN}'; known: "
                     f"{', '.join((QCFS_OP, IF_OP, IF_CHUNK_OP))}")
