"""Check that every node of a graph can live in a spiking network.

A spiking network is the ANN with its ReLU-like activations replaced by IF neurons and
every other op run on ``[T*N, ...]`` (time merged into the batch). That is exact in the
rate domain only for ops that are linear in their data inputs (or max pools, which get
the cumulative form) and that leave the batch axis alone. This module lists the ops that
qualify and, for a graph, every node that does not, with the reason and the fix.

Invariant of :func:`check_supported`: it changes nothing; it raises
:class:`UnsupportedOpError` listing *all* offending nodes, or returns.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.errors import OffendingNode, UnsupportedOpError
from onnx_rmpe.ops import DOMAIN, IF_OP, QCFS_OP
from onnx_rmpe.passes.base import classify_tensors, const_value
from onnx_rmpe.passes.base import is_zero as _is_zero
from onnx_rmpe.passes.relu_to_qcfs import is_relu_like

#: Ops that are linear (affine) in their data inputs and keep the batch axis.
LINEAR_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "AveragePool",
    "GlobalAveragePool", "Add", "Sub", "Mul", "Div", "Neg", "Concat", "Flatten", "Reshape",
    "Transpose", "Pad", "Squeeze", "Unsqueeze", "ReduceMean", "ReduceSum", "Slice", "Split",
    "Identity", "Dropout", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth",
})
#: Max pools: exact in the rate domain through the cumulative form.
MAX_POOL_OPS = frozenset({"MaxPool", "GlobalMaxPool"})
#: ReLU-like activations that become QCFS, then IF neurons.
ACTIVATION_OPS = frozenset({"Relu", "Clip", "Max"})
#: Allowed only between the last layer and a graph output: applied to the averaged logits.
READOUT_OPS = frozenset({"Softmax", "LogSoftmax"})
#: A ReLU-like node producing a graph output is part of the readout, not a neuron layer.
READOUT_ACTIVATIONS = frozenset({"Relu", "Clip", "Max"})
#: Ops allowed on shape arithmetic (never on data).
SHAPE_OPS = frozenset({
    "Shape", "Size", "Gather", "Cast", "Constant", "ConstantOfShape", "Range", "Equal",
    "Where", "Expand", "Unsqueeze", "Squeeze", "Concat", "Slice", "Mul", "Div", "Add", "Sub",
    "ReduceProd",
})

SUPPORTED_OPS = LINEAR_OPS | MAX_POOL_OPS | ACTIVATION_OPS | READOUT_OPS | {QCFS_OP, IF_OP}

NON_CONVERTIBLE = {
    "LeakyRelu": "replace LeakyReLU by ReLU and fine-tune (onnx-rmpe finetune)",
    "PRelu": "replace PReLU by ReLU and fine-tune",
    "Elu": "replace ELU by ReLU and fine-tune",
    "Selu": "replace SELU by ReLU and fine-tune",
    "Celu": "replace CELU by ReLU and fine-tune",
    "Gelu": "replace GELU by ReLU and fine-tune",
    "Sigmoid": "an IF neuron cannot produce a sigmoid; replace it by ReLU and fine-tune",
    "HardSigmoid": "replace HardSigmoid by ReLU6 (Clip 0..6) and fine-tune",
    "HardSwish": "replace HardSwish by ReLU6 (Clip 0..6) and fine-tune",
    "Tanh": "replace Tanh by ReLU and fine-tune",
    "Softplus": "replace Softplus by ReLU and fine-tune",
    "Mish": "replace Mish by ReLU and fine-tune",
    "Erf": "an Erf usually belongs to a GELU; replace GELU by ReLU and fine-tune",
    "LSTM": "recurrent layers are not supported",
    "GRU": "recurrent layers are not supported",
    "RNN": "recurrent layers are not supported",
    "Loop": "dynamic control flow is not supported",
    "If": "dynamic control flow is not supported",
    "Scan": "dynamic control flow is not supported",
    "LRN": "remove the LRN layers (or replace them by BatchNormalization), fine-tune or "
           "re-train, and export again: local response normalization divides each "
           "activation by its neighbours' squared activity, which an IF neuron cannot carry",
}

FUSED_FIX = ("the model was saved by onnxruntime with graph optimizations that fuse the "
             "activation into the layer; export the original model again (or save it with "
             "ORT_ENABLE_BASIC)")


def check_supported(graph: gs.Graph) -> None:
    """Raise :class:`UnsupportedOpError` with every node that blocks conversion.

    A check, not a pass: it reads the graph and returns nothing.
    """
    blockers = find_blockers(graph)
    if blockers:
        raise UnsupportedOpError(blockers, SUPPORTED_OPS)


def find_blockers(graph: gs.Graph) -> list[OffendingNode]:
    """Every node that cannot be converted, with the reason and the fix."""
    kinds = classify_tensors(graph)
    tail = readout_nodes(graph)
    found = []
    for node in graph.nodes:
        data = [t for t in node.inputs if kinds.get(t.name) == "data"]
        reason, fix = _check(node, data, kinds, node.name in tail)
        if reason:
            found.append(OffendingNode(node.name, node.op, node.domain or "", reason, fix))
    return found


def readout_nodes(graph: gs.Graph) -> set[str]:
    """Names of the nodes applied to the time-averaged outputs, not per step.

    Softmax-like nodes whose output is a graph output, and ReLU-like activations on a graph
    output (a ReLU on the logits: as a spiking layer it would quantize the outputs to
    ``T + 1`` levels and tie most of them at zero at small T).
    """
    return {t.inputs[0].name for t in graph.outputs
            if t.inputs and len(t.outputs) == 0
            and (t.inputs[0].op in READOUT_OPS
                 or (t.inputs[0].op in READOUT_ACTIVATIONS and is_relu_like(t.inputs[0])))}


def _check(node: gs.Node, data: list[gs.Tensor], kinds: dict[str, str],
           is_readout: bool) -> tuple[str, str]:
    op, domain = node.op, node.domain or ""
    if domain == DOMAIN and op in (QCFS_OP, IF_OP):
        return "", ""
    if domain == "com.microsoft" and op.startswith("Fused"):
        return "a fused onnxruntime op hides its activation", FUSED_FIX
    if domain not in ("", "ai.onnx"):
        return f"ops of domain '{domain}' are not supported", ""
    if op in ("Shape", "Size"):
        return "", ""  # reads only the shape; a Reshape of temporal data keeps its batch
    if op == "Where" and is_relu_like(node):
        return "", ""  # torch.where(x > 0, x, 0): becomes QCFS
    if op in ("Greater", "GreaterOrEqual", "Less", "LessOrEqual") and node.outputs[0].outputs \
            and all(c.op == "Where" and is_relu_like(c) for c in node.outputs[0].outputs):
        return "", ""  # the test of a ReLU-like Where, removed with it
    if not data:
        return ("", "") if op in SHAPE_OPS or op in LINEAR_OPS else (
            f"{op} on shape arithmetic is not supported", "")
    if op in NON_CONVERTIBLE:
        return f"{op} cannot become an integrate-and-fire neuron", NON_CONVERTIBLE[op]
    if op in READOUT_OPS:
        return ("", "") if is_readout else (
            f"{op} is supported only right before a graph output (shape-only ops such as "
            "Reshape or Flatten may follow it)", "apply the softmax outside the model")
    if op not in SUPPORTED_OPS:
        return f"{op} is not supported in a spiking network", ""
    return _check_semantics(node, data)


def _check_semantics(node: gs.Node, data: list[gs.Tensor]) -> tuple[str, str]:
    op = node.op
    if op in ("Mul", "Div", "MatMul", "Gemm") and len(data) > 1:
        return f"{op} of two data tensors is not linear", "multiply by constants only"
    if op == "MatMul" and node.inputs[0] not in data:
        return ("MatMul multiplies the data from the left by a constant (W @ x), so the batch "
                "is not the first axis", "export the layer as x @ W.T (batch first), e.g. "
                                         "torch.nn.Linear")
    if op == "Div" and node.inputs[1] in data:
        return "division by a data tensor is not linear", ""
    if op == "Max":
        if len(data) != 1 or not _is_zero(next(t for t in node.inputs if t not in data)):
            return "Max is supported only as ReLU, Max(x, 0)", ""
    if op == "Clip":
        low = const_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else 0
        if low is None or float(np.asarray(low)) != 0.0:
            return "Clip is supported only with min 0 (ReLU, ReLU6)", "use ReLU or ReLU6"
    if _touches_batch_axis(node):
        return "the op works across the batch axis, which also carries time in an SNN", ""
    return "", ""


def _touches_batch_axis(node: gs.Node) -> bool:
    op, attrs = node.op, node.attrs
    if op == "Transpose":
        perm = attrs.get("perm")
        return perm is None or list(perm)[0] != 0
    if op == "Flatten":
        return int(attrs.get("axis", 1)) == 0
    if op in ("Concat", "Split", "Softmax", "LogSoftmax"):
        return int(attrs.get("axis", 0 if op != "Softmax" else -1)) == 0
    if op in ("Squeeze", "Unsqueeze", "ReduceMean", "ReduceSum", "Slice"):
        axes = attrs.get("axes")
        idx = {"Slice": 3}.get(op, 1)
        if axes is None and len(node.inputs) > idx and node.inputs[idx].name:
            axes = const_value(node.inputs[idx])
            if axes is None:
                return True
        if axes is None:
            return op in ("ReduceMean", "ReduceSum", "Squeeze", "Slice")
        return 0 in [int(a) for a in np.asarray(axes).ravel()]
    return False
