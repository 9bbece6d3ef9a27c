"""What a model is: ANN, QCFS ANN or SNN; its inputs, outputs, neurons and blockers."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_rmpe.errors import ConversionError
from onnx_rmpe.modelio import (
    default_opset,
    get_metadata,
    load_model,
    model_kind,
    prepare,
    to_graph,
)
from onnx_rmpe.passes.base import run_passes
from onnx_rmpe.passes.pipeline import prepare_passes
from onnx_rmpe.passes.relu_to_qcfs import activation_sites, qcfs_nodes
from onnx_rmpe.passes.rmpe import if_nodes
from onnx_rmpe.passes.support import find_blockers
from onnx_rmpe.pipeline import refuse_non_float32

logger = logging.getLogger(__name__)


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
    macs: int | None = None
    calibration: list[dict] = field(default_factory=list)

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
    kind = model_kind(proto)
    info = ModelInfo(path, kind, default_opset(proto), proto.ir_version,
                     _value_infos(i for i in proto.graph.input if i.name not in inits),
                     _value_infos(proto.graph.output), metadata=get_metadata(proto))
    info.macs = _macs(proto, info.inputs)
    info.calibration = json.loads(info.metadata.get("onnx_rmpe.rmpe_layers", "[]"))
    if kind == "snn":
        info.layers = _snn_layers(proto)
        return info
    if kind == "snn-unrolled":  # the network written T times: no layer list to show
        return info
    if kind in ("snn-streaming", "snn-chunked"):
        info.layers = [{"node": name, "op": "state", "shape": dims}
                       for name, dims in _value_infos(i for i in proto.graph.input
                                                      if i.name in inits)]
        return info
    graph = run_passes(to_graph(prepare(proto, path)), prepare_passes())
    info.layers = [{"node": s.node, "op": "ReLU-like", "cap": s.cap}
                   for s in activation_sites(graph)]
    info.layers += [{"node": n.name, "op": "QCFS", "levels": n.attrs.get("levels"),
                     "lam": float(np.asarray(n.inputs[1].values))} for n in qcfs_nodes(graph)]
    info.blockers = [b.describe() for b in find_blockers(graph)]
    try:
        refuse_non_float32(proto, path)
    except ConversionError as exc:
        info.blockers.insert(0, str(exc))
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


def _macs(proto: onnx.ModelProto, inputs: list[tuple[str, list]]) -> int | None:
    """Dense MACs per sample of the linear layers (one onnxruntime run on zeros)."""
    dims = inputs[0][1][1:] if inputs else []
    if not inputs or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    try:
        from onnx_rmpe.runtime.synops import model_macs

        return sum(model_macs(proto, np.zeros([1, *dims], np.float32)).values())
    except Exception as exc:  # noqa: BLE001 - inspect describes; a model ORT cannot run has none
        logger.info("no MAC count for this model: %s", exc)
        return None
