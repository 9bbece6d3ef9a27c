"""Turn a multi-step SNN (time merged into the batch) into a one-step streaming SNN.

The multi-step graph made by :mod:`onnx_rmpe.passes.qcfs_to_if` runs all ``T`` steps at
once on ``[T*N, ...]``. The streaming graph runs *one* step on ``[N, ...]`` and carries
the state between calls as extra inputs and outputs (``<s>`` in, ``<s>_next`` out)::

    IFNeuron <layer>     v = <layer>.v                      v(0) = phi * theta + v_init
                         m = v + x(t);  s = [m >= theta];  out = theta * s
                         <layer>.v_next = m - out
    cumulative max pool  S = <pool>.sum + x(t);  C = MaxPool(S)             sum(0) = 0
                         out = C - <pool>.prev                             prev(0) = 0
                         <pool>.sum_next = S;  <pool>.prev_next = C
    readout of <y>       k = step + 1;  R = <y>.sum + y(t)                  step(0) = 0
                         <y> = R / k  (Softmax-like head applied after)     sum(0) = 0
                         <y>_step = y(t);  <y>.sum_next = R;  step_next = k

``v_init`` is the (possibly RMPE-calibrated, per-neuron) initializer of the multi-step
node. Every state input carries its initial value as a *default* (a constant graph input:
an initializer of the same name, broadcast against the batch by the first step), so a
first call may feed the data input alone; later calls feed back the ``_next`` outputs.
The pass leaves the defaults in their broadcastable shape (a scalar, or ``v0``'s
per-neuron shape); ``snn_to_streaming`` (runtime streaming module) then declares
each state ``[N, ...]`` and gives its default the shape ``[1, ...]``.

The static tiling ``Concat([x] * T)`` becomes ``x``; the per-step split, ``CumSum`` and
running-mean constructs of the multi-step graph are replaced as above; every other node
is kept, so weights are shared bit for bit.

Invariant: no ``Scan``, no ``IFNeuron`` and no dependence on ``T`` remains; stepping the
graph ``T`` times from the default state gives, at step ``t``, exactly the multi-step
graph's ``<y>_per_step[t]`` and the same spikes (the same float32 operations in the same
order). Graph inputs are the data inputs, then the states; outputs are ``<y>``, ``<y>_step``
for each multi-step output ``<y>``, then the states' ``_next`` values.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.errors import ConversionError
from onnx_rmpe.ops import (  # noqa: F401 - the suffixes are re-exported
    DEFAULT_PHI,
    DOMAIN,
    IF_OP,
    NEXT_SUFFIX,
    PER_STEP_SUFFIX,
    STEP_STATE,
    STEP_SUFFIX,
)
from onnx_rmpe.passes.base import Names, PassResult, const_value

logger = logging.getLogger(__name__)

READOUT_HEADS = ("Softmax", "LogSoftmax")


class StreamingError(ConversionError):
    """The multi-step graph holds a construct the streaming rewrite does not recognize."""

    def __init__(self, what: str) -> None:
        super().__init__(f"cannot build the streaming model: {what}; convert the ANN again "
                         "with this version of onnx-rmpe and stream the new SNN")


class StateBuilder:
    """Adds one-step nodes and state inputs/outputs to a graph (shared by the chunked form)."""

    def __init__(self, graph: gs.Graph, names: Names | None = None) -> None:
        self.graph, self.fresh = graph, names or Names(graph)
        self.states: list[gs.Tensor] = []
        self.nexts: list[gs.Variable] = []

    def op(self, op: str, inputs: list, base: str, out: gs.Variable | None = None,
           attrs: dict | None = None, dtype=np.float32) -> gs.Variable:
        out = out if out is not None else gs.Variable(self.fresh(base), dtype=dtype)
        self.graph.nodes.append(gs.Node(op, self.fresh(f"{base}_node"), attrs or {},
                                        inputs=inputs, outputs=[out]))
        return out

    def state(self, name: str, default: np.ndarray) -> gs.Constant:
        """A state input ``name`` whose default (initial) value is ``default``."""
        if name in self.fresh.used:
            raise StreamingError(f"the state name '{name}' is already a tensor of the graph")
        self.fresh.used.add(name)
        tensor = gs.Constant(name, np.array(default, np.float32))
        self.states.append(tensor)
        return tensor

    def emit(self, name: str, value: gs.Variable) -> None:
        """Output ``value`` (renamed) as the state's next value ``name + '_next'``."""
        new = f"{name}{NEXT_SUFFIX}"
        if new in self.fresh.used:
            raise StreamingError(f"the output name '{new}' is already a tensor of the graph")
        self.fresh.used.add(new)
        value.name, value.dtype = new, np.float32
        self.nexts.append(value)


def to_streaming(graph: gs.Graph) -> PassResult:
    """Rewrite a multi-step SNN graph into the one-step streaming graph (see module doc)."""
    neurons = [n for n in graph.nodes if n.op == IF_OP and n.domain == DOMAIN]
    if not neurons:
        return PassResult(graph, False)
    T = int(neurons[0].attrs.get("T", 1))
    st = StateBuilder(graph)
    outputs = _readouts(st)
    pools = [_pool(st, n) for n in list(graph.nodes) if n.op in ("MaxPool", "GlobalMaxPool")]
    _untile(graph, T)
    for node in neurons:
        _if_step(st, node)
    graph.inputs = list(graph.inputs) + st.states
    graph.outputs = outputs + st.nexts
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    left = [n.name for n in graph.nodes if n.op in ("Scan", "CumSum") or n.domain == DOMAIN]
    if left:
        raise StreamingError(f"nodes {left} still depend on the time axis")
    logger.info("streaming form: %d IF layer(s), %d cumulative pool(s), %d state(s), T=%d "
                "no longer fixed", len(neurons), sum(pools), len(st.states), T)
    return PassResult(graph, True)


def _if_step(st: StateBuilder, node: gs.Node) -> None:
    x, theta, v_init = node.inputs[:3]
    theta_v, v_init_v = const_value(theta), const_value(v_init)
    if theta_v is None or v_init_v is None:
        raise StreamingError(f"IF node '{node.name}' has a non-constant theta or v_init")
    phi = np.float32(node.attrs.get("phi", DEFAULT_PHI))
    v0 = theta_v.astype(np.float32) * phi + v_init_v.astype(np.float32)
    v = st.state(f"{node.name}.v", v0)
    out = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    m = st.op("Add", [v, x], f"{node.name}.m")
    fire = st.op("GreaterOrEqual", [m, theta], f"{node.name}.fire", dtype=np.bool_)
    fire_f = st.op("Cast", [fire], f"{node.name}.spikes", attrs={"to": 1})
    st.op("Mul", [fire_f, theta], out.name, out=out)
    st.emit(v.name, st.op("Sub", [m, out], f"{node.name}.v_new"))


def _untile(graph: gs.Graph, T: int) -> None:
    """``Concat([x] * T, axis=0) -> x``: the static part feeds each step directly."""
    for node in list(graph.nodes):
        ins = node.inputs
        if (node.op == "Concat" and len(ins) == T and T > 1 and node.attrs.get("axis") == 0
                and all(t is ins[0] for t in ins)):
            for consumer in list(node.outputs[0].outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is node.outputs[0]:
                        consumer.inputs[i] = ins[0]
            node.outputs.clear()


def _producer(t: gs.Tensor, op: str) -> gs.Node | None:
    node = t.inputs[0] if t.inputs else None
    return node if node is not None and node.op == op else None


def _pool(st: StateBuilder, pool: gs.Node) -> int:
    """The cumulative form ``Reshape(CumSum(split(x)))`` -> MaxPool -> differences."""
    flat = _producer(pool.inputs[0], "Reshape")
    cum = _producer(flat.inputs[0], "CumSum") if flat is not None else None
    split = _producer(cum.inputs[0], "Reshape") if cum is not None else None
    if split is None:
        return 0  # a pool of the static part: unchanged
    x, pooled = split.inputs[0], pool.outputs[0]
    shape = next((c for c in pooled.outputs if c.op == "Shape"), None)
    p_shape = shape.outputs[0] if shape is not None else None
    final = next((c for c in p_shape.outputs if c.op == "Reshape" and c.inputs[1] is p_shape),
                 None) if p_shape is not None else None
    if final is None:
        raise StreamingError(f"the cumulative form of max pool '{pool.name}' is not recognized")
    out = final.outputs[0]
    final.outputs.clear()
    total = st.state(f"{pool.name}.sum", np.zeros((), np.float32))
    prev = st.state(f"{pool.name}.prev", np.zeros((), np.float32))
    running = st.op("Add", [total, x], f"{pool.name}.running")
    pool.inputs[0] = running
    st.op("Sub", [pooled, prev], out.name, out=out)
    st.emit(total.name, running)
    st.emit(prev.name, pooled)
    return 1


def _readouts(st: StateBuilder) -> list[gs.Variable]:
    """Replace each ``<y>`` / ``<y>_per_step`` pair by the running mean and this step's value."""
    graph = st.graph
    by_name = {t.name: t for t in graph.outputs}
    outputs: list[gs.Variable] = []
    step = None
    for y in graph.outputs:
        if y.name.endswith(PER_STEP_SUFFIX) and y.name[:-len(PER_STEP_SUFFIX)] in by_name:
            continue
        per_step = by_name.get(f"{y.name}{PER_STEP_SUFFIX}")
        src, head = _readout_source(per_step) if per_step is not None else (None, None)
        if src is None:  # static output, or no per-step twin: kept as it is
            outputs.append(y)
            continue
        if step is None:
            counter = st.state(STEP_STATE, np.zeros((), np.float32))
            step = st.op("Add", [counter, gs.Constant(st.fresh("one_step"),
                                                      np.ones((), np.float32))], "step_count")
            st.emit(STEP_STATE, step)
        total = st.state(f"{y.name}.sum", np.zeros((), np.float32))
        running = st.op("Add", [total, src], f"{y.name}.running")
        st.emit(total.name, running)
        y.inputs.clear()
        if head is not None:
            mean = st.op("Div", [running, step], f"{y.name}_mean")
            st.op(head.op, [mean], y.name, out=y, attrs=_head_attrs(head, len(y.shape or [])))
        else:
            st.op("Div", [running, step], y.name, out=y)
        now = st.op("Identity", [src], f"{y.name}{STEP_SUFFIX}")
        now.shape, now.dtype = y.shape, np.float32
        outputs += [y, now]
    return outputs


def _readout_source(per_step: gs.Tensor) -> tuple[gs.Tensor | None, gs.Node | None]:
    head = per_step.inputs[0] if per_step.inputs and per_step.inputs[0].op in READOUT_HEADS \
        else None
    mean = head.inputs[0] if head is not None else per_step
    div = _producer(mean, "Div")
    cum = _producer(div.inputs[0], "CumSum") if div is not None else None
    split = _producer(cum.inputs[0], "Reshape") if cum is not None else None
    return (split.inputs[0], head) if split is not None else (None, None)


def _head_attrs(head: gs.Node, rank: int) -> dict:
    """The per-step head works on ``[T, N, ...]`` (axis shifted by one); undo the shift."""
    axis = int(head.attrs.get("axis", -1))
    return {"axis": axis - 1 if axis > 0 else axis}
