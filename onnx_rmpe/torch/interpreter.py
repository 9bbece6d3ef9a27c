"""Run an ONNX graph as a trainable ``torch.nn.Module`` and write the weights back.

The interpreter walks the graph's nodes in order (ONNX graphs are topologically sorted)
with the handlers of :mod:`onnx_rmpe.torch.ops`. It targets the converter's op set: the
graphs :func:`onnx_rmpe.modelio.prepare` plus the passes produce, QCFS models from
:func:`onnx_rmpe.conversion.build_qcfs` and ordinary ReLU exports.

Which initializers are trained (``nn.Parameter``):

* weights and biases of ``Conv``, ``Gemm``, ``MatMul``; scale and bias of
  ``BatchNormalization`` (its running mean and variance stay fixed: inference semantics);
* the constant operand of an ``Add`` whose other operand comes from Conv / Gemm / MatMul
  (a bias add, as tf2onnx writes Dense layers);
* the threshold ``lam`` of every ``onnx_rmpe::QCFS`` node;
* the threshold ``theta`` and start potential ``v_init`` of every ``onnx_rmpe::IFNeuron``
  node (an SNN written by ``convert`` runs with surrogate gradients through its T steps:
  :mod:`onnx_rmpe.torch.surrogate`).

Everything else (shape constants, Clip bounds, input scaling, Constant nodes) is a buffer.
Invariant of :meth:`OnnxModule.to_onnx`: the graph is unchanged; only the values of the
trained initializers differ (same names, shapes and dtypes).
"""

from __future__ import annotations

import logging
import re

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from onnx_rmpe.errors import OffendingNode, UnsupportedOpError
from onnx_rmpe.ops import DOMAIN, IF_OP, QCFS_OP
from onnx_rmpe.torch.ops import HANDLERS, parse_attributes

logger = logging.getLogger(__name__)

#: node op -> input positions whose initializers are trained
TRAINED_INPUTS = {"Conv": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
                  "BatchNormalization": (1, 2), QCFS_OP: (1,), IF_OP: (1, 2)}
OUR_OPS = (QCFS_OP, IF_OP)
LINEAR_OPS = ("Conv", "Gemm", "MatMul")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


class OnnxModule(nn.Module):
    """An ONNX model as a torch module; ``forward`` takes the graph inputs in order.

    Returns the first graph output, or a tuple when the graph has several. Behaviour does
    not depend on ``train()`` / ``eval()`` (Dropout is the identity, BatchNormalization
    uses its stored statistics), so training fine-tunes exactly the deployed function.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        self._model_bytes = model.SerializeToString()
        graph = model.graph
        opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 21)
        _check_ops(graph)
        trained = trained_initializers(graph)
        self.params = nn.ParameterDict()
        self._keys: dict[str, str] = {}
        self._buffer_keys: dict[str, str] = {}
        for init in graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            key = _unique_key(init.name, set(self._keys.values()) | set(self._buffer_keys.values()))
            if init.name in trained:
                self._keys[init.name] = key
                self.params[key] = nn.Parameter(value)
            else:
                self._buffer_keys[init.name] = key
                self.register_buffer(f"c_{key}", value)
        names = set(self._keys) | set(self._buffer_keys)
        self.input_names = [i.name for i in graph.input if i.name not in names]
        self.output_names = [o.name for o in graph.output]
        self._nodes = [(n.op_type, list(n.input), list(n.output), parse_attributes(n, opset))
                       for n in graph.node]
        self._qcfs = {n.name or n.output[0]: n.input[1] for n in graph.node
                      if n.domain == DOMAIN and n.op_type == QCFS_OP}
        self._neurons = [(n.input[1], n.input[2]) for n in graph.node
                         if n.domain == DOMAIN and n.op_type == IF_OP]
        logger.debug("interpreting %d node(s), %d trained tensor(s)", len(self._nodes),
                     len(self._keys))

    def tensor(self, name: str) -> torch.Tensor:
        """The current value of an initializer (parameter or buffer) by its ONNX name."""
        if name in self._keys:
            return self.params[self._keys[name]]
        return getattr(self, f"c_{self._buffer_keys[name]}")

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"expected {len(self.input_names)} input(s) "
                            f"({', '.join(self.input_names)}), got {len(inputs)}")
        env: dict[str, torch.Tensor] = {n: self.tensor(n) for n in self._keys}
        env.update({n: self.tensor(n) for n in self._buffer_keys})
        env.update(zip(self.input_names, inputs))
        for op, ins, outs, attrs in self._nodes:
            result = HANDLERS[op]([env[n] if n else None for n in ins], attrs)
            if isinstance(result, tuple):
                env.update(zip(outs, result))
            else:
                env[outs[0]] = result
        out = tuple(env[n] for n in self.output_names)
        return out[0] if len(out) == 1 else out

    def thresholds(self) -> dict[str, float]:
        """QCFS node name -> current ``lam``."""
        return {node: float(self.tensor(lam).detach()) for node, lam in self._qcfs.items()}

    def lam_parameters(self) -> list[nn.Parameter]:
        return [self.params[self._keys[lam]] for lam in self._qcfs.values() if lam in self._keys]

    def neuron_parameters(self) -> list[nn.Parameter]:
        """``theta`` and ``v_init`` of every IF neuron (empty for an ANN)."""
        return [self.params[self._keys[n]] for pair in self._neurons for n in pair
                if n in self._keys]

    def theta_parameters(self) -> list[nn.Parameter]:
        return [self.params[self._keys[t]] for t, _ in self._neurons if t in self._keys]

    def to_onnx(self) -> onnx.ModelProto:
        """The interpreted model with the current values of the trained tensors."""
        return write_back(self, onnx.ModelProto.FromString(self._model_bytes))


def write_back(module: OnnxModule, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose trained initializers hold ``module``'s current values."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for init in out.graph.initializer:
        if init.name not in module._keys:
            continue
        old = numpy_helper.to_array(init)
        value = module.tensor(init.name).detach().cpu().numpy().astype(old.dtype)
        if value.shape != old.shape:
            raise ValueError(f"initializer '{init.name}': shape {value.shape} != {old.shape}")
        init.CopyFrom(numpy_helper.from_array(value, init.name))
    return out


def trained_initializers(graph: onnx.GraphProto) -> set[str]:
    """Names of the float initializers the module trains (see the module docstring)."""
    floats = {i.name for i in graph.initializer if i.data_type in FLOAT_TYPES}
    producer = {o: n.op_type for n in graph.node for o in n.output}
    found: set[str] = set()
    for node in graph.node:
        slots = TRAINED_INPUTS.get(node.op_type, ())
        if node.op_type in OUR_OPS and node.domain != DOMAIN:
            slots = ()
        found |= {node.input[i] for i in slots if i < len(node.input) and node.input[i] in floats}
        if node.op_type == "Add" and len(node.input) == 2:
            a, b = node.input
            for const, other in ((a, b), (b, a)):
                if const in floats and producer.get(other) in LINEAR_OPS:
                    found.add(const)
    return found


def _check_ops(graph: onnx.GraphProto) -> None:
    bad = []
    for node in graph.node:
        ours = node.domain == DOMAIN and node.op_type in OUR_OPS
        std = node.domain in ("", "ai.onnx") and node.op_type in HANDLERS \
            and node.op_type not in OUR_OPS
        if not (ours or std):
            bad.append(OffendingNode(node.name, node.op_type, node.domain,
                                     "the torch interpreter (fine-tuning) has no rule for it"))
    if bad:
        raise UnsupportedOpError(bad, [op for op in HANDLERS if op not in OUR_OPS]
                                 + list(OUR_OPS))


def _unique_key(name: str, used: set[str]) -> str:
    key = re.sub(r"\W", "_", name) or "t"
    base, i = key, 1
    while key in used:
        key, i = f"{base}_{i}", i + 1
    return key
