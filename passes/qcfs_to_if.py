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

Invariant: no QCFS remains; with ``T = L`` and an input constant over time the first
spiking layer reproduces the QCFS layer exactly; graph input names and shapes are kept.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.passes.base import Names, PassResult, classify_tensors, const_value
from onnx_rmpe.passes.support import readout_nodes
from onnx_rmpe.runtime.neurons import DEFAULT_PHI, DOMAIN, IF_OP, QCFS_OP

logger = logging.getLogger(__name__)

PER_STEP_SUFFIX = "_per_step"
_BIG = np.iinfo(np.int64).max


class _Builder:
    """Appends nodes with fresh names to a graph."""

    def __init__(self, graph: gs.Graph, T: int) -> None:
        self.graph, self.T, self.fresh = graph, T, Names(graph)

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

    def split_time(self, x: gs.Tensor) -> tuple[gs.Variable, gs.Variable]:
        """``[T*N, ...] -> [T, N, ...]``; returns the reshaped tensor and ``Shape(x)``."""
        shape = self.op("Shape", [x], f"{x.name}_shape", dtype=np.int64)
        rest = self.op("Slice", [shape, self.const("one", [1]), self.const("big", [_BIG])],
                       f"{x.name}_rest", dtype=np.int64)
        tn = self.op("Concat", [self.const("T_and_rest", [self.T, -1]), rest],
                     f"{x.name}_shape_tn", {"axis": 0}, dtype=np.int64)
        return self.op("Reshape", [x, tn], f"{x.name}_tn"), shape


def qcfs_to_if(graph: gs.Graph, *, T: int, phi: float = DEFAULT_PHI) -> PassResult:
    """Replace QCFS by IF neurons and merge ``T`` time steps into the batch."""
    kinds = classify_tensors(graph)
    tail = readout_nodes(graph)
    b = _Builder(graph, T)
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
            _to_if(node, as_temporal(node.inputs[0]), T, float(node.attrs.get("phi", phi)))
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
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    logger.info("converted %d QCFS node(s) to IF neurons, T=%d", neurons, T)
    return PassResult(graph, neurons > 0)


def _to_if(node: gs.Node, x: gs.Tensor, T: int, phi: float) -> None:
    lam = node.inputs[1]
    node.inputs.clear()
    node.op, node.domain = IF_OP, DOMAIN
    node.attrs = {"T": int(T), "phi": float(phi)}
    v_init = gs.Constant(f"{node.name}.v_init", np.zeros((), np.float32))
    node.inputs.extend([x, lam, v_init])


def _cumulative_pool(b: _Builder, pool: gs.Node) -> None:
    x, out = pool.inputs[0], pool.outputs[0]
    x_tn, x_shape = b.split_time(x)
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
    total = b.op("CumSum", [src_tn, b.const("axis0", np.array(0, np.int64))], f"{name}_cumsum")
    steps = np.arange(1, b.T + 1, dtype=np.float32).reshape([b.T] + [1] * rank)
    per_step = b.op("Div", [total, b.const("steps", steps)], f"{name}_running_mean")
    last = b.op("Gather", [per_step, b.const("last", np.array(b.T - 1, np.int64))],
                f"{name}_mean", {"axis": 0})
    return last, per_step


def _repeat_steps(b: _Builder, src: gs.Tensor, name: str) -> gs.Variable:
    stacked = b.op("Unsqueeze", [src, b.const("ax", [0])], f"{name}_one_step")
    return b.op("Concat", [stacked] * b.T, f"{name}_repeated", {"axis": 0})
