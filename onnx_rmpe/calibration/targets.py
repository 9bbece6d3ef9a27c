"""The targets of RMPE calibration: the QCFS ANN (at the chosen levels) and its mean activations.
"""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import onnx

from onnx_rmpe.data import Dataset
from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.modelio import (
    ensure_functions,
)
from onnx_rmpe.runtime.neurons import DOMAIN, QCFS_OP
from onnx_rmpe.runtime.ray_engine import ray_batch_sums
from onnx_rmpe.runtime.session import (
    Device,
    active_provider,
    batches,
    make_session,
    resolve_providers,
)
from onnx_rmpe.runtime.statistics import expose_outputs

logger = logging.getLogger(__name__)


CLIP_LEVELS = 1 << 20


def qcfs_with_levels(qcfs: onnx.ModelProto, levels: int) -> onnx.ModelProto:
    """The QCFS model with every QCFS node at ``levels`` levels (thresholds unchanged).

    With a very large ``levels`` (``CLIP_LEVELS``) it is the clip ANN ``clip(z, 0, lam)``:
    the ReLU network with its activations capped at the thresholds.
    """
    if levels < 1:
        raise OptionError("target_levels", f"must be at least 1, got {levels}")
    model = onnx.ModelProto.FromString(qcfs.SerializeToString())
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == QCFS_OP:
            for attr in node.attribute:
                if attr.name == "levels":
                    attr.i = levels
    return ensure_functions(model)

def _ann_means(qcfs: onnx.ModelProto, ds: Dataset, names: list[str], batch_size: int,
               threads: int | None, device: Device,
               engine: str = "local") -> tuple[dict[str, np.ndarray], str]:
    """E[a_ANN] per neuron for every QCFS node (matched to IF layers by node name).

    ``engine="ray"``: the batches run as Ray Data ``map_batches`` over onnxruntime sessions
    (:func:`onnx_rmpe.runtime.ray_engine.ray_batch_sums`), the same batches and the same
    float64 sums in the same order: the same targets bit for bit.
    """
    nodes = {n.name: n.output[0] for n in qcfs.graph.node}
    missing = [n for n in names if n not in nodes]
    if missing:
        raise ConversionError(f"the QCFS model has no node named {', '.join(missing)}: "
                              "give the QCFS model the SNN was converted from")
    outputs = [nodes[n] for n in names]
    exposed = expose_outputs(qcfs, outputs)
    if engine == "ray":
        parts = [ds.x[sl] for sl in batches(len(ds), batch_size)]
        factory = partial(_batch_sums_on_actor, exposed.SerializeToString(), outputs, threads,
                          device)
        totals = ray_batch_sums(factory, parts, cpus_per_actor=float(threads or 1))
        provider = f"ray/{resolve_providers(device)[0]}"
        return {name: s / len(ds) for name, s in zip(names, totals)}, provider
    session = make_session(exposed, threads=threads, device=device)
    input_name = session.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    for sl in batches(len(ds), batch_size):
        for name, value in zip(names, session.run(outputs, {input_name: ds.x[sl]})):
            total = value.sum(0, dtype=np.float64)
            sums[name] = sums[name] + total if name in sums else total
    return {name: s / len(ds) for name, s in sums.items()}, active_provider(session)


def _batch_sums_on_actor(payload: bytes, outputs: list[str], threads: int | None,
                         device: Device):
    """On a Ray actor: a session of the serialized model, and the function from a batch
    to its float64 sums over the batch axis (one per output, as the local loop sums)."""
    session = make_session(onnx.ModelProto.FromString(payload), threads=threads, device=device)
    input_name = session.get_inputs()[0].name

    def sums(x: np.ndarray) -> list[np.ndarray]:
        return [v.sum(0, dtype=np.float64) for v in session.run(outputs, {input_name: x})]
    return sums
