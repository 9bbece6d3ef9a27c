"""Walk a multi-step SNN's ONNX graph and describe it as NIR nodes and edges.

The SNN made by :func:`onnx_rmpe.convert` passes ``theta * s(t)`` between layers (``s`` the
spikes); a NIR ``IF`` node emits the spikes ``s(t)`` alone. Each ONNX tensor is therefore
described as a sum of NIR node outputs, each with a scalar factor::

    tensor = sum_i  c_i * out(node_i)

An ``IFNeuron`` gives ``[(if, theta)]``; a weighted layer absorbs a common factor into its
weights (``Conv(c * s) = Conv_{c W}(s)``); ``AveragePool`` becomes ``SumPool2d`` with factor
``1 / k^2``; a residual ``Add`` concatenates the two sums (NIR adds all edges into a node).
Where the factors of a sum differ, or a sum enters an IF node or an output, each factor
``c != 1`` becomes an explicit scaling layer (a depthwise 1x1 ``Conv2d`` or a diagonal
``Affine``), so no NIR-only op (``Scale``) is needed.

Invariant: every NIR node gets its per-sample shape; the sum reaching each IF node equals
the ONNX IF input current exactly in real arithmetic (up to float rounding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.errors import ConversionError, OffendingNode
from onnx_rmpe.nir_input import FoldError, InputAffine, PaddedShift
from onnx_rmpe.passes.base import const_value
from onnx_rmpe.runtime.neurons import DEFAULT_PHI, DOMAIN, IF_OP

logger = logging.getLogger(__name__)

Sum = list  # list[tuple[str, float]]: NIR node name, factor
SUPPORTED = ("Conv", "Gemm", "MatMul", "Add (residual or bias)", "AveragePool",
             "GlobalAveragePool", "Flatten", "Reshape (to [N, -1])", "IFNeuron",
             "Mul/Div by a scalar constant")


class NirExportError(ConversionError):
    """The SNN holds nodes NIR cannot express; lists them all with the fix."""

    def __init__(self, nodes: list[OffendingNode]) -> None:
        self.nodes = nodes
        lines = [f"{len(nodes)} node(s) cannot be written as NIR:"]
        lines += [f"  - {n.describe()}" for n in nodes]
        lines.append("NIR export supports: " + ", ".join(SUPPORTED))
        super().__init__("\n".join(lines))


_FIXES = {
    "Sub": "normalize the data before the model (a shift before a zero-padded Conv cannot be "
           "folded into it)",
    "MaxPool": "NIR has no (cumulative) max pool: train or convert with AvgPool "
               "(finetune --maxpool-to-avgpool), or keep the model in onnxruntime",
    "GlobalMaxPool": "use GlobalAveragePool, or keep the model in onnxruntime",
    "Concat": "NIR has no concatenation: use a residual Add, or keep the model in onnxruntime",
    "Softmax": "remove the Softmax from the model (apply it to the averaged NIR output)",
    "LogSoftmax": "remove the LogSoftmax from the model (apply it to the averaged NIR output)",
}


@dataclass
class NirParts:
    """NIR nodes (``name -> nir node``), edges, and notes for the graph metadata."""

    nodes: dict = field(default_factory=dict)
    edges: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    neurons: list = field(default_factory=list)  # (if node name, v0 array)

    def add(self, name: str, node, shape) -> str:
        self.nodes[name] = node
        self.shapes[name] = tuple(int(d) for d in shape)
        return name


def safe_name(onnx_name: str) -> str:
    """A NIR node name for an ONNX node name (NIR files are HDF5: no '/' in names)."""
    return onnx_name.strip("/").replace("/", "_") or "node"


def readout_sources(graph: gs.Graph) -> dict[str, str]:
    """Map the per-step tensor of each output (``Reshape -> CumSum`` input) to its name."""
    found = {}
    for node in graph.nodes:
        if node.op == "CumSum" and node.inputs[0].inputs and node.inputs[0].inputs[0].op \
                == "Reshape":
            src = node.inputs[0].inputs[0].inputs[0]
            found[src.name] = src.name.removesuffix("_steps")
    return found


def walk(graph: gs.Graph, shapes: dict[str, tuple], T: int) -> NirParts:
    """Describe ``graph`` (a multi-step SNN) as NIR nodes and edges; see the module doc."""
    import nir

    parts = NirParts()
    data = graph.inputs[0]
    parts.add("input", nir.Input(input_type=np.array(shapes[data.name])), shapes[data.name])
    sums: dict[str, Sum] = {data.name: [("input", 1.0)]}
    outputs = readout_sources(graph)
    skip = _downstream(graph, outputs)
    bad = [OffendingNode(n.name, n.op, n.domain, "NIR has no softmax (the output is the "
                         "readout layer's value per step)", _FIXES[n.op])
           for n in graph.nodes if n.name in skip and n.op in ("Softmax", "LogSoftmax")
           and not n.outputs[0].name.endswith("_per_step")]  # its per-step twin is generated
    builder = _Builder(parts, sums, shapes)
    builder.affine[data.name] = InputAffine.identity(shapes[data.name])
    for node in graph.toposort().nodes:
        if node.name in skip or node.op == "Shape":
            continue  # readout plumbing (time split, running mean), shape arithmetic
        if not any(t.name in sums for t in node.inputs):
            continue
        try:
            builder.node(node)
        except (_Refused, FoldError) as exc:
            bad.append(OffendingNode(node.name, node.op, node.domain, str(exc),
                                     _FIXES.get(node.op, "keep the model in onnxruntime")))
    for name in outputs:
        if name not in sums:
            continue
        out = f"output_{outputs[name]}" if len(outputs) > 1 else "output"
        ones = builder.unit(sums[name])
        parts.add(out, nir.Output(output_type=np.array(shapes[name])), shapes[name])
        parts.edges += [(src, out) for src, _ in ones]
    if bad:
        raise NirExportError(bad)
    return parts


def _downstream(graph: gs.Graph, sources) -> set[str]:
    """Names of the nodes fed (directly or not) by the tensors named in ``sources``."""
    tensors = graph.tensors()
    todo = [tensors[name] for name in sources if name in tensors]
    seen: set[str] = set()
    while todo:
        for node in todo.pop().outputs:
            if node.name not in seen:
                seen.add(node.name)
                todo += node.outputs
    return seen


def _ungroup(w: np.ndarray, groups: int) -> np.ndarray:
    """A grouped convolution's weights as one dense (block-diagonal) kernel.

    NIR 1.0's type inference takes a Conv2d's input channels from ``weight.shape[1]``,
    ignoring ``groups``, so a grouped node fails ``nir.read``; the dense kernel computes
    the same sums (the added zeros are exact).
    """
    if groups == 1:
        return w
    cout, cin_g = w.shape[:2]
    dense = np.zeros((cout, cin_g * groups, *w.shape[2:]), w.dtype)
    per = cout // groups
    for g in range(groups):
        dense[g * per:(g + 1) * per, g * cin_g:(g + 1) * cin_g] = w[g * per:(g + 1) * per]
    return dense


class _Refused(Exception):
    """A node the walker cannot express (collected, then raised as NirExportError)."""


class _Builder:
    """Turns one ONNX node at a time into NIR nodes (see the module doc)."""

    def __init__(self, parts: NirParts, sums: dict[str, Sum], shapes: dict) -> None:
        self.parts, self.sums, self.shapes = parts, sums, shapes
        self.affine: dict[str, InputAffine] = {}  # tensors that are x * s + h of the input

    def node(self, node: gs.Node) -> None:
        out = node.outputs[0].name
        src = next((t for t in node.inputs if t.name in self.affine), None)
        if src is not None and node.op in ("Add", "Sub", "Mul", "Div"):
            const = next((t for t in node.inputs if t is not src), None)
            if const is None or const_value(const) is None:
                raise _Refused("the input normalization needs constant operands")
            self.affine[out] = self.affine[src.name].then(node.op, const_value(const),
                                                          node.inputs[0] is src)
            self.sums[out] = self.sums[src.name]
            return
        if src is not None and node.op not in ("Conv", "Gemm", "MatMul", "Flatten", "Reshape",
                                               "Identity", "Dropout", "Concat"):
            raise _Refused("the input (after its normalization) must reach a Conv or Gemm first")
        if src is not None and node.op in ("Identity", "Dropout", "Concat"):
            self.affine[out] = self.affine[src.name]
        if node.domain == DOMAIN and node.op == IF_OP:
            self.sums[out] = self._if(node)
        elif node.op == "Concat" and len({t.name for t in node.inputs}) == 1:
            self.sums[out] = self.sums[node.inputs[0].name]  # time tiling of a static tensor
        elif node.op in ("Identity", "Dropout"):
            self.sums[out] = self.sums[node.inputs[0].name]
        elif node.op in ("Conv", "Gemm", "MatMul"):
            self.sums[out] = self._weighted(node)
        elif node.op in ("AveragePool", "GlobalAveragePool"):
            self.sums[out] = self._pool(node)
        elif node.op in ("Flatten", "Reshape"):
            self.sums[out] = self._flatten(node)
        elif node.op in ("Add", "Mul", "Div"):
            self.sums[out] = self._arith(node)
        else:
            raise _Refused("NIR has no equivalent")

    # -- helpers ---------------------------------------------------------------------
    def shape(self, name: str) -> tuple:
        return tuple(self.shapes[name])

    def unit(self, terms: Sum) -> Sum:
        """The same sum with every factor 1: explicit scaling layers where needed."""
        return [(src, 1.0) if c == 1.0 else (self._scale(src, c), 1.0) for src, c in terms]

    def common(self, terms: Sum) -> tuple[Sum, float]:
        """``(sources, c)`` with ``sum = c * sum(sources)``."""
        factors = {c for _, c in terms}
        if len(factors) == 1:
            return terms, factors.pop()
        return self.unit(terms), 1.0

    def _scale(self, src: str, c: float) -> str:
        import nir

        shape = self.parts.shapes[src]
        name = f"{src}.scale"
        if len(shape) == 3:  # c * identity as a 1x1 convolution (the zeros add exactly)
            w = (np.eye(shape[0], dtype=np.float32) * np.float32(c))[:, :, None, None]
            node = nir.Conv2d(input_shape=shape[1:], weight=w, stride=1, padding=0,
                              dilation=1, groups=1, bias=np.zeros(shape[0], np.float32))
        elif len(shape) == 1:
            node = nir.Affine(weight=np.eye(shape[0], dtype=np.float32) * np.float32(c),
                              bias=np.zeros(shape[0], np.float32))
        else:
            raise _Refused(f"cannot scale a tensor of shape {shape}")
        self.parts.add(name, node, shape)
        self.parts.edges.append((src, name))
        return name

    def _normalize_layer(self, fold: InputAffine, src: str) -> str:
        """The input normalization as its own 1x1 Conv2d (see :mod:`onnx_rmpe.nir_input`)."""
        import nir

        shape = self.shape(src)
        w, b = fold.pointwise()
        name = self.parts.add(f"{self.sums[src][0][0]}.normalize",
                              nir.Conv2d(input_shape=shape[1:], weight=w, stride=1, padding=0,
                                         dilation=1, groups=1, bias=b), shape)
        self._connect(self.sums[src], name)
        return name

    def _connect(self, terms: Sum, dst: str) -> None:
        self.parts.edges += [(src, dst) for src, _ in terms]

    # -- ops -------------------------------------------------------------------------
    def _if(self, node: gs.Node) -> Sum:
        import nir

        theta, v_init = const_value(node.inputs[1]), const_value(node.inputs[2])
        if theta is None or v_init is None or np.size(theta) != 1:
            raise _Refused("theta must be one constant per layer and v_init a constant")
        shape = self.shape(node.outputs[0].name)
        th = np.float32(theta.reshape(()))
        phi = np.float32(node.attrs.get("phi", DEFAULT_PHI))
        v0 = np.broadcast_to(th * phi + v_init.astype(np.float32), shape).astype(np.float32)
        name = safe_name(node.name)
        ones = np.ones(shape, np.float32)
        self.parts.add(name, nir.IF(r=ones, v_threshold=ones * th, v_reset=np.zeros_like(ones),
                                    metadata={"onnx_node": node.name, "reset": "subtract"}),
                       shape)
        self._connect(self.unit(self.sums[node.inputs[0].name]), name)
        self.parts.neurons.append((name, v0))
        return [(name, float(th))]

    def _weighted(self, node: gs.Node) -> Sum:
        import nir

        terms, c = self.common(self.sums[node.inputs[0].name])
        w = const_value(node.inputs[1])
        b = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
        if w is None:
            raise _Refused("the weights are not constant")
        name, a = safe_name(node.name), node.attrs
        if node.op == "Conv":
            if len(w.shape) != 4:
                raise _Refused("only 2-D convolutions are supported")
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:] or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
                raise _Refused("asymmetric or automatic padding has no NIR form")
            bias = np.zeros(w.shape[0], np.float32) if b is None else b.astype(np.float32)
            if w.shape[2] != w.shape[3]:  # NIR 1.0's shape inference assumes square kernels
                raise _Refused(f"a non-square kernel {list(w.shape[2:])} has no valid NIR type")
            w = _ungroup(w, int(a.get("group", 1)))
            bias = np.zeros(w.shape[0], np.float32) if b is None else b.astype(np.float32)
            fold = self.affine.get(node.inputs[0].name)
            if fold is not None:
                try:
                    w, bias = fold.fold_conv(w, bias, pads)
                except PaddedShift:
                    terms = [(self._normalize_layer(fold, node.inputs[0].name), 1.0)]
            nir_node = nir.Conv2d(
                input_shape=self.shape(node.inputs[0].name)[1:],
                weight=(w * np.float32(c)).astype(np.float32),
                stride=tuple(a.get("strides", [1, 1])), padding=tuple(pads[:2]),
                dilation=tuple(a.get("dilations", [1, 1])), groups=1,
                bias=bias)
        else:
            if node.op == "Gemm":
                w = w.T if not a.get("transB", 0) else w
                w = w * np.float32(a.get("alpha", 1.0))
                if a.get("transA", 0):
                    raise _Refused("transA is not supported")
                b = None if b is None else b * np.float32(a.get("beta", 1.0))
            else:
                w = w.T
            out_f = w.shape[0]
            bias = np.zeros(out_f, np.float32) if b is None else \
                np.broadcast_to(b, (out_f,)).astype(np.float32)
            fold = self.affine.get(node.inputs[0].name)
            if fold is not None:
                w, bias = fold.fold_affine(w, bias)
            nir_node = nir.Affine(weight=(w * np.float32(c)).astype(np.float32), bias=bias)
        self.parts.add(name, nir_node, self.shape(node.outputs[0].name))
        self._connect(terms, name)
        return [(name, 1.0)]

    def _pool(self, node: gs.Node) -> Sum:
        import nir

        terms, c = self.common(self.sums[node.inputs[0].name])
        shape_in = self.shape(node.inputs[0].name)
        if node.op == "GlobalAveragePool":
            k, s = list(shape_in[1:]), list(shape_in[1:])
        else:
            k = list(node.attrs["kernel_shape"])
            s = list(node.attrs.get("strides", [1] * len(k)))
            if any(node.attrs.get("pads", [0])) or node.attrs.get("ceil_mode", 0):
                raise _Refused("AveragePool with padding or ceil_mode has no NIR SumPool form")
        if len(k) != 2:
            raise _Refused("only 2-D pooling is supported")
        name = safe_name(node.name)
        self.parts.add(name, nir.SumPool2d(kernel_size=np.array(k), stride=np.array(s),
                                           padding=np.array([0, 0])),
                       self.shape(node.outputs[0].name))
        self._connect(terms, name)
        return [(name, c / float(k[0] * k[1]))]

    def _flatten(self, node: gs.Node) -> Sum:
        import nir

        shape_in, shape_out = self.shape(node.inputs[0].name), self.shape(node.outputs[0].name)
        if len(shape_out) != 1:
            raise _Refused(f"only a flatten to [N, features] is supported, got {shape_out}")
        terms = self.sums[node.inputs[0].name]
        if node.inputs[0].name in self.affine:
            self.affine[node.outputs[0].name] = self.affine[node.inputs[0].name].flattened()
        if len(shape_in) == 1:
            return terms
        terms, c = self.common(terms)
        name = safe_name(node.name)
        self.parts.add(name, nir.Flatten(input_type={"input": np.array(shape_in)}, start_dim=0,
                                         end_dim=-1), shape_out)
        self._connect(terms, name)
        return [(name, c)]

    def _arith(self, node: gs.Node) -> Sum:
        a, b = node.inputs[:2]
        if node.op == "Add" and a.name in self.sums and b.name in self.sums:
            return self.sums[a.name] + self.sums[b.name]
        data, const = (a, b) if a.name in self.sums else (b, a)
        k = const_value(const)
        if k is None:
            raise _Refused("both inputs must come from the network, or one be a constant")
        terms = self.sums[data.name]
        if node.op == "Add":
            return self._bias(terms, k)
        if np.size(k) != 1 or (node.op == "Div" and data is not a):
            raise _Refused("only a multiplication or division by one scalar is supported")
        f = float(k.reshape(())) if node.op == "Mul" else 1.0 / float(k.reshape(()))
        return [(src, c * f) for src, c in terms]

    def _bias(self, terms: Sum, k: np.ndarray) -> Sum:
        """``x + k`` where ``x`` is one Affine/Conv output: fold ``k`` into its bias."""
        if len(terms) != 1 or terms[0][1] != 1.0:
            raise _Refused("a constant can only be added right after a Gemm/MatMul/Conv")
        node = self.parts.nodes[terms[0][0]]
        if not hasattr(node, "bias") or not np.asarray(node.bias).ndim == 1:
            raise _Refused("a constant can only be added right after a Gemm/MatMul/Conv")
        k = np.asarray(k, np.float32).reshape(-1)
        if k.size not in (1, node.bias.size):
            raise _Refused(f"the added constant of shape {k.shape} is not a per-output bias")
        node.bias = (node.bias + k).astype(np.float32)
        return terms
