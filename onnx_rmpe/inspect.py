"""What a model is: ANN, QCFS ANN or SNN; its inputs, outputs, neurons and blockers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_rmpe.errors import ConversionError
from onnx_rmpe.modelio import (
    default_opset,
    get_metadata,
    is_qcfs,
    is_snn,
    is_streaming,
    load_model,
    prepare,
    to_graph,
)
from onnx_rmpe.passes.base import run_passes
from onnx_rmpe.passes.fold_batchnorm import fold_batchnorm
from onnx_rmpe.passes.fold_batchnorm_forward import fold_batchnorm_forward
from onnx_rmpe.passes.normalize import normalize
from onnx_rmpe.passes.readout import sink_readout
from onnx_rmpe.passes.recognize_qcfs import recognize_qcfs
from onnx_rmpe.passes.relu_to_qcfs import activation_sites, qcfs_nodes
from onnx_rmpe.passes.rmpe import if_nodes
from onnx_rmpe.passes.simplify_ops import simplify_ops
from onnx_rmpe.passes.support import find_blockers


@dataclass
class ModelInfo:
    """A description of a model, for people (``describe``) and machines (``as_dict``)."""

    path: str
    kind: str
    opset: int
    ir_version: int
    inputs: list[tuple[str, list]]
    outputs: list[tuple[str, list]]
    layers: list[dict] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(vars(self))


def _value_infos(values) -> list[tuple[str, list]]:
    out = []
    for v in values:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        out.append((v.name, dims))
    return out


def inspect_model(model: str | os.PathLike | onnx.ModelProto) -> ModelInfo:
    """Describe ``model``; for an ANN, list its convertible activations and its blockers."""
    path = str(model) if not isinstance(model, onnx.ModelProto) else "<model>"
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    inits = {i.name for i in proto.graph.initializer}
    kind = "snn" if is_snn(proto) else ("qcfs" if is_qcfs(proto) else "ann")
    if is_streaming(proto):
        kind = "snn-streaming"
    info = ModelInfo(path, kind, default_opset(proto), proto.ir_version,
                     _value_infos(i for i in proto.graph.input if i.name not in inits),
                     _value_infos(proto.graph.output), metadata=get_metadata(proto))
    if kind == "snn":
        info.layers = _snn_layers(proto)
        return info
    if kind == "snn-streaming":
        info.layers = [{"node": name, "op": "state", "shape": dims}
                       for name, dims in _value_infos(i for i in proto.graph.input
                                                      if i.name in inits)]
        return info
    try:
        graph = run_passes(to_graph(prepare(proto, path)),
                           [("normalize", normalize), ("simplify_ops", simplify_ops),
                            ("sink_readout", sink_readout), ("fold_batchnorm", fold_batchnorm),
                            ("fold_batchnorm_forward", fold_batchnorm_forward),
                            ("recognize_qcfs", recognize_qcfs)])
    except ConversionError as exc:
        info.blockers = [str(exc)]
        return info
    info.layers = [{"node": s.node, "op": "ReLU-like", "cap": s.cap}
                   for s in activation_sites(graph)]
    info.layers += [{"node": n.name, "op": "QCFS", "levels": n.attrs.get("levels"),
                     "lam": float(np.asarray(n.inputs[1].values))} for n in qcfs_nodes(graph)]
    info.blockers = [b.describe() for b in find_blockers(graph)]
    return info


def _snn_layers(proto: onnx.ModelProto) -> list[dict]:
    layers = []
    for node in if_nodes(to_graph(proto)):
        v_init = np.asarray(node.inputs[2].values) if hasattr(node.inputs[2], "values") else None
        layers.append({
            "node": node.name, "op": "IFNeuron", "T": node.attrs.get("T"),
            "theta": float(np.asarray(node.inputs[1].values)),
            "v_init_shape": list(v_init.shape) if v_init is not None else None,
            "mean_abs_v_init": float(np.abs(v_init).mean()) if v_init is not None else None,
        })
    return layers
