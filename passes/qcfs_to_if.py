"""Turn a QCFS network into a spiking network of IF neurons, time merged into the batch.

Every QCFS node ``lam * clip(floor(z L / lam + phi) / L, 0, 1)`` becomes an ``IFNeuron``
with threshold ``theta = lam``, start potential ``phi * theta + v_init`` (``v_init = 0``
until RMPE calibration sets it) and reset by subtraction. Tensors downstream of a neuron
are *temporal*: ``[T*N, ...]``, time-major (row ``t*N + n``), and every linear op runs
once on them. Tensors upstream (the first layer, fed by the analog input) stay ``[N, ...]``
and run once; where a static tensor meets a temporal one it is tiled ``T`` times.

* MaxPool / GlobalMaxPool of a temporal tensor ``x`` uses the cumulative form
  ``C(t) = MaxPool(sum_{s<=t} x(s))``, output ``C(t) - C(t-1)``: over ``T`` steps it passes
  exactly ``T * MaxPool(mean x)``, which pooling the per-step values does not.
* Each temporal graph output ``y`` becomes ``y`` = mean over the ``T`` steps (``[N, ...]``)
  and ``y_per_step`` = the running mean after each step (``[T, N, ...]``). A Softmax or
  LogSoftmax in front of an output is applied after the averaging.

With ``chunk=True`` the graph runs one *chunk* of ``T`` steps per call and carries the
state between calls as inputs with default values and ``<state>_next`` outputs (the names
of :mod:`onnx_rmpe.passes.streaming`): ``IFNeuronChunk`` takes and returns the membrane
potential ``<layer>.v`` (default ``phi * theta``); a cumulative pool prepends its running
sum ``<pool>.sum`` to the chunk before ``CumSum`` (pooling that extra row gives the
previous chunk's last pooled value again, bit for bit, for the first difference); a
readout prepends ``<y>.sum`` and divides by ``step + t``. The carried values enter the
same float32 sums in the same order, so chunks of ``k`` steps reproduce the multi-step
graph's outputs bit for bit.

Invariant: no QCFS remains; with ``T = L`` and an input constant over time the first
spiking layer reproduces the QCFS layer exactly; graph input names and shapes are kept.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.ops import (  # noqa: F401 - PER_STEP_SUFFIX is re-exported
    DEFAULT_PHI,
    DOMAIN,
    IF_CHUNK_OP,
    IF_OP,
    PER_STEP_SUFFIX,
    QCFS_OP,
    STEP_STATE,
)
from onnx_rmpe.passes.base import Names, PassResult, classify_tensors, const_value
from onnx_rmpe.passes.streaming import StateBuilder
from onnx_rmpe.passes.support import readout_nodes

logger = logging.getLogger(__name__)

_BIG = np.iinfo(np.int64).max


class _Builder:
    """Appends nodes with fresh names to a graph."""

    def __init__(self, graph: gs.Graph, T: int, chunk: bool = False) -> None:
        self.graph, self.T, self.fresh = graph, T, Names(graph)
        self.states = StateBuilder(graph, self.fresh) if chunk else None
        self.step: gs.Tensor | None = None

    def op(self, op: str, inputs: list, base: str, attrs: dict | None = None,
           dtype=np.float32, out: gs.Variable | None = None) -> gs.Variable:
        out = out or gs.Variable(self.fresh(base), dtype=dtype)
        self.graph.nodes.append(gs.Node(op, self.fresh(f"{base}_node"), attrs or {},
                                        inputs=inputs, outputs=[out]))
        return out

    def const(self, base: str, value) -> gs.Constant:
        return gs.Constant(self.fresh(base), np.asarray(value))

    def tile(self, x: gs.Tensor) -> gs.Tensor:
        """``[N, ...] -> [T*N, ...]``: T copies along the batch axis, time-major."""
        if self.T == 1:
            return x
        return self.op("Concat", [x] * self.T, f"{x.name}_tiled", {"axis": 0})

    def split_time(self, x: gs.Tensor,
                   steps: int | None = None) -> tuple[gs.Variable, gs.Variable]:
        """``[T*N, ...] -> [T, N, ...]`` (or ``steps`` for T); returns it and ``Shape(x)``."""
        shape = self.op("Shape", [x], f"{x.name}_shape", dtype=np.int64)
        rest = self.op("Slice", [shape, self.const("one", [1]), self.const("big", [_BIG])],
                       f"{x.name}_rest", dtype=np.int64)
        head = [steps or self.T, -1]
        tn = self.op("Concat", [self.const("T_and_rest", head), rest],
                     f"{x.name}_shape_tn", {"axis": 0}, dtype=np.int64)
        return self.op("Reshape", [x, tn], f"{x.name}_tn"), shape

    def steps(self, x_tn: gs.Tensor, lo: int, hi: int, base: str) -> gs.Variable:
        """Steps ``lo..hi-1`` of a ``[T, N, ...]`` tensor."""
        return self.op("Slice", [x_tn, self.const("lo", [lo]), self.const("hi", [hi]),
                                 self.const("ax", [0])], base)

    def prepend(self, name: str, x_tn: gs.Tensor) -> gs.Variable:
        """``Concat([state[None], x_tn])`` for a carried state ``name`` (default 0)."""
        state = self.states.state(name, np.zeros((), np.float32))
        first = self.steps(x_tn, 0, 1, f"{x_tn.name}_first")
        one = self.op("Unsqueeze", [state, self.const("ax", [0])], f"{name}_one")
        full = self.op("Expand", [one, self.op("Shape", [first], f"{first.name}_shape",
                                                dtype=np.int64)], f"{name}_full")
        return self.op("Concat", [full, x_tn], f"{name}_then_chunk", {"axis": 0})

    def emit_last(self, name: str, x_tn: gs.Tensor, index: int | None = None) -> None:
        """Step ``index`` (default: the last) of ``x_tn`` becomes the state's next value."""
        index = self.T - 1 if index is None else index
        last = self.op("Gather", [x_tn, self.const("last", np.array(index, np.int64))],
                       f"{name}_last", {"axis": 0})
        self.states.emit(name, last)


def qcfs_to_if(graph: gs.Graph, *, T: int, phi: float = DEFAULT_PHI, chunk: bool = False,
               form: str | None = None) -> PassResult:
    """Replace QCFS by IF neurons and merge ``T`` time steps into the batch.

    ``chunk``: the graph runs ``T`` steps per call with the state carried (module doc).
    ``form``: the IF body, ``unrolled`` or ``scan`` (default: chosen by T, see
    ``default_form`` of the runtime neuron module); recorded as a node attribute.
    """
    kinds = classify_tensors(graph)
    tail = readout_nodes(graph)
    b = _Builder(graph, T, chunk)
    temporal: set[str] = set()
    tiled: dict[str, gs.Tensor] = {}
    neurons = 0

    def as_temporal(t: gs.Tensor) -> gs.Tensor:
        if t.name in temporal or kinds.get(t.name) != "data":
            return t
        if t.name not in tiled:
            tiled[t.name] = b.tile(t)
        return tiled[t.name]

    for node in list(graph.toposort().nodes):
        if node.name in tail:
            continue
        outs = [t.name for t in node.outputs]
        if node.op == QCFS_OP and node.domain == DOMAIN:
            _to_if(b, node, as_temporal(node.inputs[0]), float(node.attrs.get("phi", phi)))
            if form is not None:
                node.attrs["form"] = form
            neurons += 1
        elif not any(t.name in temporal for t in node.inputs):
            continue
        elif node.op in ("MaxPool", "GlobalMaxPool"):
            _cumulative_pool(b, node)
        else:
            for i, t in enumerate(node.inputs):
                node.inputs[i] = as_temporal(t)
            if node.op == "Reshape" and const_value(node.inputs[1]) is None:
                _keep_batch_dim(b, node)
        temporal.update(outs)
    _readout(b, temporal, tail)
    if b.states is not None:
        graph.inputs = list(graph.inputs) + b.states.states
        graph.outputs = list(graph.outputs) + b.states.nexts
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    logger.info("converted %d QCFS node(s) to IF neurons, T=%d", neurons, T)
    return PassResult(graph, neurons > 0)


def _to_if(b: _Builder, node: gs.Node, x: gs.Tensor, phi: float) -> None:
    lam = node.inputs[1]
    node.inputs.clear()
    node.op, node.domain = IF_OP, DOMAIN
    node.attrs = {"T": int(b.T), "phi": float(phi)}
    if b.states is None:
        v_init = gs.Constant(f"{node.name}.v_init", np.zeros((), np.float32))
        node.inputs.extend([x, lam, v_init])
        return
    theta = np.asarray(const_value(lam), np.float32)
    v = b.states.state(f"{node.name}.v", theta * np.float32(phi))
    node.op = IF_CHUNK_OP
    node.inputs.extend([x, lam, v])
    v_next = gs.Variable(b.fresh(f"{node.name}.v_new"), dtype=np.float32)
    node.outputs.append(v_next)
    b.states.emit(v.name, v_next)


def _cumulative_pool(b: _Builder, pool: gs.Node) -> None:
    x, out = pool.inputs[0], pool.outputs[0]
    x_tn, x_shape = b.split_time(x)
    if b.states is not None:
        return _cumulative_pool_chunk(b, pool, x_tn, x_shape)
    running = b.op("CumSum", [x_tn, b.const("axis0", np.array(0, np.int64))], f"{x.name}_cumsum")
    running = b.op("Reshape", [running, x_shape], f"{x.name}_cumsum_flat")
    pooled = gs.Variable(b.fresh(f"{out.name}_cumulative"), dtype=np.float32)
    pool.inputs[0], pool.outputs[0] = running, pooled
    p_tn, p_shape = b.split_time(pooled)
    if b.T > 1:
        first = b.op("Slice", [p_tn, b.const("s0", [0]), b.const("s1", [1]), b.const("ax", [0])],
                     f"{out.name}_first")
        later = b.op("Slice", [p_tn, b.const("s1", [1]), b.const("sT", [b.T]), b.const("ax", [0])],
                     f"{out.name}_later")
        earlier = b.op("Slice", [p_tn, b.const("s0", [0]), b.const("sT1", [b.T - 1]),
                                 b.const("ax", [0])], f"{out.name}_earlier")
        diff = b.op("Sub", [later, earlier], f"{out.name}_diff")
        p_tn = b.op("Concat", [first, diff], f"{out.name}_steps", {"axis": 0})
    b.op("Reshape", [p_tn, p_shape], out.name, out=out)


def _cumulative_pool_chunk(b: _Builder, pool: gs.Node, x_tn: gs.Tensor,
                           x_shape: gs.Tensor) -> None:
    """The chunked cumulative pool: only the running sum ``S`` is carried.

    ``C = MaxPool(CumSum([S, x(1..k)]))`` has ``k + 1`` rows; row 0 is ``MaxPool(S)``, the
    previous chunk's last pooled value bit for bit (the same op on the same input), so the
    outputs ``C[1:] - C[:-1]`` need no second state.
    """
    x, out, T = pool.inputs[0], pool.outputs[0], b.T
    total = b.op("CumSum", [b.prepend(f"{pool.name}.sum", x_tn),
                            b.const("axis0", np.array(0, np.int64))], f"{x.name}_cumsum")
    b.emit_last(f"{pool.name}.sum", total, index=T)
    pool.inputs[0] = b.op("Reshape", [total, _flat_shape(b, x)], f"{x.name}_cumsum_flat")
    pooled = gs.Variable(b.fresh(f"{out.name}_cumulative"), dtype=np.float32)
    pool.outputs[0] = pooled
    p_tn, _ = b.split_time(pooled, steps=T + 1)
    diff = b.op("Sub", [b.steps(p_tn, 1, T + 1, f"{out.name}_later"),
                        b.steps(p_tn, 0, T, f"{out.name}_earlier")], f"{out.name}_steps")
    b.op("Reshape", [diff, _flat_shape(b, pooled)], out.name, out=out)


def _flat_shape(b: _Builder, like: gs.Tensor) -> gs.Variable:
    """``[-1, *like.shape[1:]]``: merge a leading time axis back into the batch."""
    shape = b.op("Shape", [like], f"{like.name}_shape", dtype=np.int64)
    rest = b.op("Slice", [shape, b.const("one", [1]), b.const("big", [_BIG])],
                f"{like.name}_rest", dtype=np.int64)
    return b.op("Concat", [b.const("minus_one", [-1]), rest], f"{like.name}_flat_shape",
                {"axis": 0}, dtype=np.int64)


def _keep_batch_dim(b: _Builder, reshape: gs.Node) -> None:
    """A computed Reshape target takes its first entry from the data (now ``T*N``)."""
    data, target = reshape.inputs[0], reshape.inputs[1]
    shape = b.op("Shape", [data], f"{data.name}_shape", dtype=np.int64)
    batch = b.op("Slice", [shape, b.const("s0", [0]), b.const("s1", [1])], f"{data.name}_batch",
                 dtype=np.int64)
    rest = b.op("Slice", [target, b.const("s1", [1]), b.const("big", [_BIG])],
                f"{target.name}_rest", dtype=np.int64)
    reshape.inputs[1] = b.op("Concat", [batch, rest], f"{target.name}_tn", {"axis": 0},
                             dtype=np.int64)


def _readout(b: _Builder, temporal: set[str], tail: set[str]) -> None:
    graph = b.graph
    outputs, per_steps = [], []
    for y in list(graph.outputs):
        head = y.inputs[0] if y.inputs and y.inputs[0].name in tail else None
        src = head.inputs[0] if head is not None else y
        rank = len(y.shape) if y.shape is not None else 2
        if src.name in temporal:
            mean, per_step = _time_average(b, src, y.name, rank)
        else:
            mean, per_step = src, _repeat_steps(b, src, y.name)
        if head is not None:  # softmax-like or ReLU readout: apply it to the averages
            attrs = dict(head.attrs)
            if head.op in ("Softmax", "LogSoftmax"):
                axis = int(attrs.get("axis", -1))
                attrs["axis"] = axis + 1 if axis >= 0 else axis
            head.inputs[0] = mean
            per_step = b.op(head.op, [per_step] + list(head.inputs[1:]),
                            f"{y.name}_per_step_readout", attrs)
        elif src.name in temporal:  # the averaged tensor takes the output's name
            original, shape = y.name, y.shape
            y.name, y.shape = b.fresh(f"{original}_steps"), None
            mean.name, mean.shape, mean.dtype = original, shape, np.float32
            y = mean
        per_step.name = f"{y.name}{PER_STEP_SUFFIX}"
        per_step.dtype = np.float32
        per_step.shape = [b.T] + list(y.shape) if y.shape is not None else None
        b.fresh.used.add(per_step.name)
        outputs.append(y)
        per_steps.append(per_step)
    graph.outputs = outputs + per_steps


def _time_average(b: _Builder, src: gs.Tensor, name: str, rank: int):
    src_tn, _ = b.split_time(src)
    steps = b.const("steps", np.arange(1, b.T + 1, dtype=np.float32).reshape([b.T] + [1] * rank))
    axis0 = b.const("axis0", np.array(0, np.int64))
    if b.states is None:
        total = b.op("CumSum", [src_tn, axis0], f"{name}_cumsum")
    else:  # carried running sum and step count
        total = b.op("CumSum", [b.prepend(f"{name}.sum", src_tn), axis0], f"{name}_cumsum")
        total = b.steps(total, 1, b.T + 1, f"{name}_running")
        b.emit_last(f"{name}.sum", total)
        if b.step is None:
            b.step = b.states.state(STEP_STATE, np.zeros((), np.float32))
            b.states.emit(STEP_STATE, b.op("Add", [b.step, b.const("chunk", np.float32(b.T))],
                                           "step_count"))
        steps = b.op("Add", [b.step, steps], f"{name}_steps")
    per_step = b.op("Div", [total, steps], f"{name}_running_mean")
    last = b.op("Gather", [per_step, b.const("last", np.array(b.T - 1, np.int64))],
                f"{name}_mean", {"axis": 0})
    return last, per_step


def _repeat_steps(b: _Builder, src: gs.Tensor, name: str) -> gs.Variable:
    stacked = b.op("Unsqueeze", [src, b.const("ax", [0])], f"{name}_one_step")
    return b.op("Concat", [stacked] * b.T, f"{name}_repeated", {"axis": 0})
