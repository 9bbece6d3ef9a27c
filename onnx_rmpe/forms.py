"""Inference forms of a multi-step SNN: chunked (k steps per call) and network-unrolled.

**Streaming** (:func:`snn_to_streaming`): one step per call, membrane potentials as state
inputs and outputs (:mod:`onnx_rmpe.passes.streaming`; run it with
:class:`onnx_rmpe.runtime.streaming.StreamingRunner`).

**Chunked**: ``k`` time steps per call, state carried, memory ``k / T`` of multi-step.

The multi-step SNN holds the activations of all ``T`` steps at once (time is merged into
the batch); the streaming SNN holds one step but pays one session call per step. The
chunked SNN sits between them: each call runs ``k`` steps (time merged into the batch as
in the multi-step form, so every linear op still runs once per call on ``[k*N, ...]``) and
returns the state the next call starts from (``<layer>.v``, ``<pool>.sum``/``.prev``,
``<y>.sum``, ``step``; the names of the streaming form). ``T / k`` calls give exactly the
multi-step model's per-step outputs and spikes (bit for bit, see
:mod:`onnx_rmpe.passes.qcfs_to_if`). Run it with
:class:`onnx_rmpe.runtime.streaming.StreamingRunner`, which reads ``k`` from the metadata.

:func:`chunk_for_budget` picks ``k`` from a memory budget: the largest divisor of ``T``
whose estimated activation memory (every intermediate tensor of one step, times ``k`` and
the batch) fits.

**Unrolled** (:func:`snn_to_unrolled`): the streaming step written ``T`` times into one
graph (:mod:`onnx_rmpe.passes.unroll_steps`): the multi-step model's inputs and outputs,
each layer on ``[N, ...]`` per step (no tensor of T steps). Its IF steps are then written
with ops onnxruntime keeps in its NCHWc layout (:mod:`onnx_rmpe.passes.blocked_if_step`:
the same spikes bit for bit for the same potentials; onnxruntime's Conv+Sum fusion may
round ``v + x`` differently, so the outputs are equal up to float rounding).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.modelio import (
    BATCH_DIM,
    default_opset,
    get_metadata,
    infer_shapes,
    to_graph,
    to_model,
)
from onnx_rmpe.ops import DEFAULT_PHI, DOMAIN, IF_OP, NEXT_SUFFIX, STEP_STATE
from onnx_rmpe.passes.base import run_passes
from onnx_rmpe.passes.pipeline import (
    blocked_step_passes,
    if_passes,
    streaming_passes,
    unrolled_passes,
)

logger = logging.getLogger(__name__)

CHUNK_KEY = "onnx_rmpe.chunk"


def snn_to_streaming(snn: onnx.ModelProto) -> onnx.ModelProto:
    """The one-step streaming model of a multi-step SNN (IR 10, the SNN's opset)."""
    graph = run_passes(to_graph(snn), streaming_passes())
    if not any(i.name.endswith(".v") for i in graph.inputs):
        raise ConversionError("the model has no IFNeuron layer: it is not a multi-step SNN "
                              "(convert the ANN first)")
    meta = get_metadata(snn)
    meta["onnx_rmpe.kind"] = "snn-streaming"
    model = to_model(graph, opset=default_opset(snn), metadata=meta)
    return batch_state_shapes(model)


def batch_state_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Declare every state ``[N, ...]`` (the shape of its ``_next``) with a ``[1, ...]`` default."""
    shapes = _value_shapes(infer_shapes(onnx.ModelProto.FromString(model.SerializeToString())))
    inits = {i.name: i for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name not in inits or vi.name == STEP_STATE:
            continue
        dims = shapes.get(f"{vi.name}{NEXT_SUFFIX}")
        tensor = vi.type.tensor_type
        if dims is None or not dims or any(d is None for d in dims[1:]):
            if dims is None or dims:  # shape unknown: accept any shape
                tensor.ClearField("shape")
                logger.debug("state '%s': shape unknown, declared without one", vi.name)
            continue
        default = numpy_helper.to_array(inits[vi.name])
        default = np.broadcast_to(default, [1] + dims[1:]).astype(np.float32)
        inits[vi.name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(default), vi.name))
        tensor.ClearField("shape")
        tensor.shape.dim.add().dim_param = BATCH_DIM
        for d in dims[1:]:
            tensor.shape.dim.add().dim_value = d
    declared = {vi.name: vi.type for vi in model.graph.input if vi.name in inits}
    for vi in model.graph.output:
        state = vi.name[:-len(NEXT_SUFFIX)] if vi.name.endswith(NEXT_SUFFIX) else None
        if state in declared:
            vi.type.CopyFrom(declared[state])
    return model


def _value_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out



def start_potentials(snn: onnx.ModelProto) -> dict[str, np.ndarray]:
    """``v(0) = phi * theta + v_init`` of every IF layer of a multi-step SNN, in float32."""
    inits = {i.name: i for i in snn.graph.initializer}
    starts = {}
    for node in snn.graph.node:
        if node.domain != DOMAIN or node.op_type != IF_OP:
            continue
        phi = next((a.f for a in node.attribute if a.name == "phi"), DEFAULT_PHI)
        theta = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        v_init = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        starts[node.name] = theta * np.float32(phi) + v_init  # the IF function's order
    return starts


def snn_to_chunked(qcfs: onnx.ModelProto, snn: onnx.ModelProto, *, chunk: int,
                   form: str | None = None) -> onnx.ModelProto:
    """The chunked form (``chunk`` steps per call) of the multi-step ``snn`` made from ``qcfs``.

    The (RMPE-calibrated) start potentials come from ``snn``; ``chunk`` must divide its T.
    ``form`` is the IF body (``unrolled``/``scan``, default by ``chunk``).
    """
    meta = get_metadata(snn)
    T = int(meta.get("onnx_rmpe.T", 0))
    if chunk < 1 or T < 1 or T % chunk:
        raise OptionError("chunk", f"must divide T={T} (steps per call), got {chunk}")
    phi = float(meta.get("onnx_rmpe.phi", DEFAULT_PHI))
    graph = run_passes(to_graph(qcfs), if_passes(T=chunk, phi=phi, form=form, chunk=True))
    starts = start_potentials(snn)
    for tensor in graph.inputs:
        layer = tensor.name.removesuffix(".v")
        if tensor.name.endswith(".v") and layer in starts:
            tensor.values = starts[layer]
    meta.update({"onnx_rmpe.kind": "snn-chunked", CHUNK_KEY: str(chunk)})
    model = to_model(graph, opset=default_opset(snn), metadata=meta)
    logger.info("chunked form: %d steps per call, %d call(s) for T=%d", chunk, T // chunk, T)
    return batch_state_shapes(model)


#: IF steps of the network-unrolled form: ``blocked`` (depthwise 1x1 convs and Relus that
#: onnxruntime keeps in its NCHWc layout, :mod:`onnx_rmpe.passes.blocked_if_step`) or
#: ``plain`` (GreaterOrEqual / Cast / Mul / Sub, the streaming step).
UNROLLED_STEPS = ("blocked", "plain")


def snn_to_unrolled(snn: onnx.ModelProto, *, step: str = "blocked") -> onnx.ModelProto:
    """The network-unrolled form of a multi-step SNN (same inputs, outputs and values).

    ``step``: how each IF step is written (:data:`UNROLLED_STEPS`); both give the same
    spikes (``blocked``: see :mod:`onnx_rmpe.passes.blocked_if_step` for the rounding).
    """
    meta = get_metadata(snn)
    T = int(meta.get("onnx_rmpe.T", 0))
    if T < 1:
        raise OptionError("model", "the SNN has no 'onnx_rmpe.T' metadata; convert it again")
    if step not in UNROLLED_STEPS:
        raise OptionError("step", f"must be one of {', '.join(UNROLLED_STEPS)}, got '{step}'")
    graph = run_passes(to_graph(snn), unrolled_passes(T=T))
    meta["onnx_rmpe.kind"] = "snn-unrolled"
    model = to_model(graph, opset=default_opset(snn), metadata=meta)
    if step == "blocked":
        graph = run_passes(to_graph(infer_shapes(model)), blocked_step_passes())
        model = to_model(graph, opset=default_opset(snn), metadata=meta)
    return model


def step_bytes_per_sample(model: onnx.ModelProto) -> int:
    """Bytes of all float intermediate tensors of one sample and one step (an upper bound
    on what one step of the SNN keeps alive; onnxruntime reuses buffers below it)."""
    inferred = infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    total = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT or not t.HasField("shape"):
            continue
        dims = [d.dim_value for d in t.shape.dim[1:]]
        if all(d > 0 for d in dims):
            total += 4 * int(np.prod(dims, dtype=np.int64))
    return total


def chunk_for_budget(qcfs: onnx.ModelProto, *, T: int, batch: int, budget_mb: float) -> int:
    """The largest divisor ``k`` of ``T`` with ``k * batch * step_bytes <= budget_mb``."""
    per_step = step_bytes_per_sample(qcfs) * batch
    fits = [k for k in range(1, T + 1) if T % k == 0 and k * per_step <= budget_mb * 2**20]
    if not fits:
        raise OptionError("max_memory", f"{budget_mb:g} MiB is below one step at batch "
                                             f"{batch} ({per_step / 2**20:.1f} MiB)")
    logger.info("memory budget %.0f MiB: %d steps per call (%.1f MiB per step at batch %d)",
                budget_mb, fits[-1], per_step / 2**20, batch)
    return fits[-1]


__all__ = ["CHUNK_KEY", "UNROLLED_STEPS", "batch_state_shapes", "chunk_for_budget",
           "snn_to_chunked", "snn_to_streaming", "snn_to_unrolled", "start_potentials"]
