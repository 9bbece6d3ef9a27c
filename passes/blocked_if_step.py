"""Write each IF step of a network-unrolled SNN with ops onnxruntime keeps in its NCHWc layout.

onnxruntime's NCHWc layout transformer (CPU, ``ORT_ENABLE_ALL``/``LAYOUT``) runs Conv and
pools in a blocked channel layout and propagates it only through Conv, pools,
BatchNormalization, Concat on channels, Relu/Sigmoid/Tanh, and Add/Sum/Mul of two blocked
tensors. The IF step ``GreaterOrEqual -> Cast -> Mul -> Sub`` is none of these, so each
spiking layer costs a reorder out of the blocked layout and one back in, every step. This
pass writes the step of every 4-D spiking layer with ``C`` channels, threshold ``theta``
(a scalar or per channel) as three 1x1 depthwise convolutions (``Conv_dw(z; w, b) = w z +
b``, per channel) and Relus::

    r   = Relu(Conv_dw(m; -B, B * theta))        B = 2^(24 - floor(log2 theta)) per channel
    out = Relu(Conv_dw(r; -theta, theta))        = theta * [m >= theta]
    v'  = Add(Conv_dw(out; -1, 0), m)            = m - out

**Exactness** (float32, round to nearest, for every finite ``m``; ``theta`` in [2^-100,
2^24)): ``B`` is a power of two, so ``B * m`` and ``B * theta`` are exact and
``r = round(B * (theta - m))`` (one rounding, fused or not). If ``m >= theta`` the real
value is ``<= 0``, so ``r = 0``. If ``m < theta``, ``theta - m >= 2^(e - 24)`` with ``e =
floor(log2 theta)`` (two floats below and at ``theta`` differ by at least half an ulp of
``theta``), so ``B * (theta - m) >= 1`` and, rounding being monotone, ``r >= 1``. Then
``theta - theta * r`` is ``theta`` for ``r = 0`` and ``<= 0`` for ``r >= 1`` (monotone
rounding again), so ``out = theta * [m >= theta]`` exactly, and ``m + (-1) * out`` is
``m - out`` (``-1 * out`` is exact; one rounding). The spikes and potentials are the
``GreaterOrEqual``/``Cast``/``Mul``/``Sub`` step's, bit for bit (up to the sign of a zero
potential). The step-1 potential ``m = v(0) + x`` stays an ``Add`` with the constant start
potential, followed by an identity depthwise convolution (``1 * m + 0``) that brings it
into the blocked layout, so the potentials of all later steps stay there.

onnxruntime may fuse ``Add(v, x)`` into the convolution that produces ``x`` (its Conv+Sum
fusion accumulates onto ``v``): that changes the order of the float additions in ``m``, so
the unrolled model's potentials may differ from the multi-step model's by rounding (as they
already may when onnxruntime picks other convolution kernels for ``[N, ...]``).

Invariant: every rewritten layer's steps contain no ``GreaterOrEqual``, ``Cast`` or
``Sub``; the tensors named as before keep their meaning (``out`` feeds the same consumers).
Layers that are not 4-D with a known channel count, or whose threshold is not in
[2^-100, 2^24), keep the old step (logged at DEBUG).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.passes.base import Names, PassResult, const_value, producer, skip

logger = logging.getLogger(__name__)


#: Names the streaming pass gives the states an unrolled graph reads as constants at step 1
#: (membrane potential, running sum of a cumulative max pool and its last pooled value).
STATE_SUFFIXES = (".v", ".sum", ".prev")


def blocked_if_step(graph: gs.Graph) -> PassResult:
    """Rewrite every recognized IF step and state update (see module doc); shapes inferred."""
    names = Names(graph)
    steps = [s for s in (_match(n) for n in list(graph.nodes)) if s is not None]
    done = 0
    for step in steps:
        channels = _channels(step["m"], step["x"])
        theta = _theta(step["theta"], channels)
        if channels is None or theta is None:
            skip(f"IF step '{step['mul'].name}' kept: not 4-D with known channels, or its "
                 "threshold is not in [2^-100, 2^24)")
            continue
        _rewrite(graph, names, step, theta)
        done += 1
    states = sum(_state_op(graph, names, n) for n in list(graph.nodes) if n.op in ("Add", "Sub"))
    if done or states:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    logger.info("blocked IF step: %d of %d step(s) rewritten, %d state update(s)", done,
                len(steps), states)
    return PassResult(graph, done + states > 0)


def _match(mul: gs.Node) -> dict | None:
    """``Mul(Cast(GreaterOrEqual(m, theta)), theta)`` (and ``Sub(m, out)`` unless last)."""
    if mul.op != "Mul" or len(mul.inputs) != 2 or const_value(mul.inputs[1]) is None:
        return None
    cast = producer(mul.inputs[0])
    ge = producer(cast.inputs[0]) if cast is not None and cast.op == "Cast" else None
    if ge is None or ge.op != "GreaterOrEqual" or ge.inputs[1] is not mul.inputs[1]:
        return None
    m, out = ge.inputs[0], mul.outputs[0]
    add = producer(m)
    if add is None or add.op != "Add":
        return None
    sub = next((c for c in m.outputs if c.op == "Sub" and c.inputs[0] is m
                and c.inputs[1] is out), None)
    return {"mul": mul, "cast": cast, "ge": ge, "sub": sub, "m": m, "x": add.inputs[1],
            "out": out, "theta": mul.inputs[1]}


def _state_op(graph: gs.Graph, names: Names, node: gs.Node) -> int:
    """``Add(state, x)`` / ``Sub(a, state)`` with a step-1 state constant, ``Sub(a, b)``."""
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return 0
    a, b = node.inputs
    if node.op == "Add" and isinstance(a, gs.Constant):
        a, b = b, a
    if isinstance(a, gs.Constant) or (isinstance(b, gs.Constant)
                                      and not b.name.endswith(STATE_SUFFIXES)):
        return 0
    channels = _channels(node.outputs[0], a)
    if channels is None:
        return 0
    y = node.outputs[0]
    if not isinstance(b, gs.Constant):
        if node.op == "Add":
            return 0  # both in the blocked layout already
        node.inputs = [a, _dw(graph, names, f"{node.name}_neg", b, -np.ones(channels),
                              np.zeros(channels))]
        node.op = "Add"
        return 1
    sign = 1.0 if node.op == "Add" else -1.0
    per_channel = _per_channel(const_value(b).astype(np.float32), channels)
    node.inputs.clear()
    node.outputs.clear()
    if per_channel is not None:  # w * a + c: one rounding, fl(a + c)
        _dw(graph, names, f"{node.name}_bias", a, np.ones(channels), sign * per_channel, out=y)
        return 1
    # per-neuron constant: the op as it was, then an identity conv into the blocked layout
    raw = gs.Variable(names(f"{node.name}_nchw"), dtype=np.float32, shape=y.shape)
    graph.nodes.append(gs.Node(node.op, names(f"{node.name}_nchw_node"), {}, [a, b], [raw]))
    _dw(graph, names, f"{node.name}_blocked", raw, np.ones(channels), np.zeros(channels), out=y)
    return 1


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """A constant's value per channel ``[C]`` if it varies only along the channel axis."""
    if value.size == 1:
        return np.full(channels, value.reshape(()), np.float32)
    while value.ndim > 3 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 3 or value.shape[0] not in (1, channels) \
            or not np.all(value == value[:, :1, :1]):
        return None
    return np.ascontiguousarray(np.broadcast_to(value[:, 0, 0], (channels,)), np.float32)


def _channels(m: gs.Tensor, x: gs.Tensor) -> int | None:
    for t in (m, x):
        shape = t.shape
        if shape is not None and len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0:
            return int(shape[1])
    return None


def _theta(tensor: gs.Tensor, channels: int | None) -> np.ndarray | None:
    """The threshold per channel, ``[C]`` float32, or None if it is not a valid one."""
    value = const_value(tensor)
    if channels is None or value is None:
        return None
    value = value.astype(np.float32)
    if value.size == 1:
        theta = np.full(channels, value.reshape(()), np.float32)
    elif value.size == channels and tuple(value.shape[-3:]) == (channels, 1, 1):
        theta = value.reshape(channels)
    else:
        return None
    ok = np.all(np.isfinite(theta)) and np.all(theta >= 2.0**-100) \
        and np.all(theta < 2.0**24)
    return theta if ok else None


def _scale(theta: np.ndarray) -> np.ndarray:
    """``B = 2^(24 - floor(log2 theta))`` per channel (exact powers of two)."""
    _, exp = np.frexp(theta)  # theta = f * 2^exp, f in [0.5, 1): floor(log2 theta) = exp - 1
    return np.ldexp(np.float32(1), (25 - exp).astype(np.int32)).astype(np.float32)


def _dw(graph: gs.Graph, names: Names, base: str, z: gs.Tensor, w: np.ndarray, b: np.ndarray,
        out: gs.Variable | None = None, relu: bool = False) -> gs.Variable:
    """``w * z + b`` per channel as a 1x1 depthwise Conv (optionally followed by Relu)."""
    c = len(w)
    weight = gs.Constant(names(f"{base}_w"), w.astype(np.float32).reshape(c, 1, 1, 1))
    bias = gs.Constant(names(f"{base}_b"), b.astype(np.float32).reshape(c))
    conv_out = gs.Variable(names(base), dtype=np.float32) if relu or out is None else out
    graph.nodes.append(gs.Node("Conv", names(f"{base}_conv"), {"group": c, "kernel_shape": [1, 1]},
                               [z, weight, bias], [conv_out]))
    if not relu:
        return conv_out
    result = out if out is not None else gs.Variable(names(f"{base}_relu"), dtype=np.float32)
    graph.nodes.append(gs.Node("Relu", names(f"{base}_relu_node"), {}, [conv_out], [result]))
    return result


def _rewrite(graph: gs.Graph, names: Names, step: dict, theta: np.ndarray) -> None:
    c = len(theta)
    base = step["mul"].name
    m, out = step["m"], step["out"]
    B = _scale(theta)
    r = _dw(graph, names, f"{base}_r", m, -B, B * theta, relu=True)
    v_new = step["sub"].outputs[0] if step["sub"] is not None else None
    for node in (step["mul"], step["cast"], step["ge"], step["sub"]):
        if node is not None:
            node.inputs.clear()
            node.outputs.clear()
    _dw(graph, names, f"{base}_out", r, -theta, theta, out=out, relu=True)
    if v_new is not None:  # the last step's potential is not used
        neg = _dw(graph, names, f"{base}_neg", out, -np.ones(c), np.zeros(c))
        graph.nodes.append(gs.Node("Add", names(f"{base}_v_node"), {}, [m, neg], [v_new]))


__all__ = ["blocked_if_step"]
