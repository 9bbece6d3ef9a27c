"""Model loading, checking and saving.

Loading checks the file, reads external weights, brings the default-domain opset into
the range the converter writes (17 to 21), gives the graph inputs and outputs a symbolic
batch dimension and runs shape inference. Saving writes IR version 10 atomically (a
temporary file renamed into place), so a failed run leaves no partial output.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from onnx_rmpe.errors import ModelLoadError
from onnx_rmpe.logs import quiet_dependencies
from onnx_rmpe.outputs import remove_quietly, write_bytes
from onnx_rmpe.runtime.neurons import DOMAIN, DOMAIN_VERSION, IF_OP, QCFS_OP, function_for

logger = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 17, 21
IR_VERSION = 10
BATCH_DIM = "N"


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX model file (external ``.data`` weights included)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(str(path), "no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises many types
        reason = f"not an ONNX model ({type(exc).__name__}: {exc})"
        raise ModelLoadError(str(path), reason) from None
    _load_external(model, path)
    check_opset_known(model, str(path))
    if not model.graph.node:
        raise ModelLoadError(str(path), "the file parsed, but holds no graph nodes (is it ONNX?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(str(path), f"onnx.checker rejects it: {first}") from None
    return model


def _load_external(model: onnx.ModelProto, path: Path) -> None:
    """Read the external weights; a missing or unsafe data file is named as such."""
    from onnx.external_data_helper import (
        ExternalDataInfo,
        load_external_data_for_model,
        uses_external_data,
    )

    tensors = [t for t in model.graph.initializer if uses_external_data(t)]
    for tensor in tensors:
        location = ExternalDataInfo(tensor).location
        target = (path.parent / location).resolve()
        if not target.is_relative_to(path.parent.resolve()):
            raise ModelLoadError(str(path), f"weights '{tensor.name}' point to '{location}', "
                                            "outside the model's folder; refusing to read it")
        if not target.is_file():
            raise ModelLoadError(str(path), f"the external data file '{location}' (weights "
                                            f"'{tensor.name}') is missing; keep it beside the "
                                            "model")
    if tensors:
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(str(path), f"cannot read external weights: {exc}") from None


def read_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A model given as a path (loaded and checked) or as a ModelProto, and its name."""
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<model>"
    return load_model(model), str(model)


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def neuron_attributes(model: onnx.ModelProto, op_type: str) -> dict[str, float | int]:
    """The model-wide attributes of the ``op_type`` nodes (all nodes must agree)."""
    found: dict[str, float | int] = {}
    for node in model.graph.node:
        if node.domain != DOMAIN or node.op_type != op_type:
            continue
        for attr in node.attribute:
            value = onnx.helper.get_attribute_value(attr)
            if found.setdefault(attr.name, value) != value:
                raise ModelLoadError(
                    model.graph.name or "<model>",
                    f"{op_type} nodes disagree on '{attr.name}' ({found[attr.name]} vs "
                    f"{value} at node '{node.name}'); one value per model is supported",
                )
    return found


def ensure_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Attach the onnx_rmpe function definitions (and domain import) a model uses."""
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    if not used:
        return model
    opset = default_opset(model)
    keep = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(keep)
    for op_type in sorted(used):
        model.functions.append(function_for(op_type, opset, neuron_attributes(model, op_type)))
    if not any(imp.domain == DOMAIN for imp in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model


def check_opset_known(model: onnx.ModelProto, path: str) -> None:
    """Refuse an opset newer than the installed onnx knows (it cannot be converted)."""
    opset, newest = default_opset(model), onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelLoadError(path, f"opset {opset} is newer than this onnx ({onnx.__version__}, "
                                   f"opset <= {newest}) knows; export it with opset "
                                   f"{MIN_OPSET} to {MAX_OPSET}")


def normalize_opset(model: onnx.ModelProto, path: str = "<model>") -> onnx.ModelProto:
    """Bring the default-domain opset into [17, 21] with onnx's version converter."""
    opset = default_opset(model)
    if MIN_OPSET <= opset <= MAX_OPSET:
        return model
    check_opset_known(model, path)
    target = MIN_OPSET if opset < MIN_OPSET else MAX_OPSET
    logger.info("converting opset %d to %d (onnx.version_converter)", opset, target)
    custom = [n for n in model.graph.node if n.domain == DOMAIN]
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    try:
        if custom:  # the version converter does not know our domain: convert around it
            converted = _convert_with_custom(model, target)
        else:
            converted = version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(path, f"cannot convert opset {opset} to {target}: {exc}") from None
    _name_upgrade_nodes(converted)
    return converted


def _name_upgrade_nodes(model: onnx.ModelProto) -> None:
    """Name the nodes the version converter added after the user's node they serve.

    Every node of the user's model is named before the upgrade, so an unnamed node is one
    the upgrade wrote: ``<user node>/upgrade_<op>``, after the named node that reads its
    output or writes its input, so that messages point at a node the user knows.
    """
    nodes = list(model.graph.node)
    writer = {o: n for n in nodes for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for node in nodes:
        if node.name:
            continue
        near = [r for o in node.output for r in readers.get(o, []) if r.name]
        near += [writer[i] for i in node.input if i in writer and writer[i].name]
        base = near[0].name if near else "graph"
        node.name = f"{base}/upgrade_{node.op_type}"
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.name in seen:
            node.name = f"{node.name}_{i}"
        seen.add(node.name)


def _convert_with_custom(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    del model.functions[:]
    keep = [imp for imp in model.opset_import if imp.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    converted = version_converter.convert_version(model, target)
    return ensure_functions(converted)


def check_batch_first(model: onnx.ModelProto, path: str = "<model>") -> None:
    """Refuse an input whose first axis is fixed while a later one is dynamic: its batch
    is not the first axis (the converter merges time into the first axis)."""
    init_names = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in init_names or len(dims) < 2:
            continue
        first = dims[0].dim_value if dims[0].HasField("dim_value") else None
        later = [i for i, d in enumerate(dims[1:], 1) if not d.HasField("dim_value")]
        if first is not None and first > 1 and later:
            raise ModelLoadError(path, f"input '{vi.name}' has a fixed first axis ({first}) and "
                                       f"a dynamic axis {later[0]}: onnx-rmpe needs the batch "
                                       "as the first axis; export the model batch-first")


def set_symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every graph input and output a symbolic first dimension and drop stale shapes."""
    init_names = {i.name for i in model.graph.initializer}
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name in init_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    del model.graph.value_info[:]
    return model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - shape inference is a help, not a must
        logger.debug("shape inference failed: %s", exc)
        return model


def prepare(model: onnx.ModelProto, path: str = "<model>") -> onnx.ModelProto:
    """Everything a loaded model needs before the passes: opset, batch, shapes.

    The opset upgrade and shape inference serialize the model several times; they run on
    a copy whose large weights are stubs (name, type and shape only, see
    :func:`_detach_weights`), and the weights are put back at the end.
    """
    quiet_dependencies()
    model, weights = _detach_weights(model)
    model = ensure_functions(model)
    model = normalize_opset(model, path)
    check_batch_first(model, path)
    model = set_symbolic_batch(model)
    model = infer_shapes(model)
    _attach_weights(model, weights)
    return model


#: Initializers at least this large travel as stubs through upgrade and shape inference.
DETACH_BYTES = 1 << 16
_STUB = "onnx_rmpe-detached-weight"


def _detach_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """A copy of ``model`` whose large initializers are external-data stubs, and the weights.

    A stub keeps name, type and dims (all that shape inference and the version converter
    read of a weight); small initializers (shapes, axes, scalars) stay as they are.
    """
    graph = model.graph
    weights = {t.name: t for t in graph.initializer
               if t.data_location != onnx.TensorProto.EXTERNAL and _nbytes(t) >= DETACH_BYTES}
    kept = list(graph.initializer)
    del graph.initializer[:]
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
    finally:
        graph.initializer.extend(kept)
    for t in kept:
        if t.name in weights:
            stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims,
                                    data_location=onnx.TensorProto.EXTERNAL)
            stub.external_data.add(key="location", value=_STUB)
            copy.graph.initializer.append(stub)
        else:
            copy.graph.initializer.append(t)
    return copy, weights


def _attach_weights(model: onnx.ModelProto, weights: dict) -> None:
    for t in model.graph.initializer:
        if t.name in weights and t.data_location == onnx.TensorProto.EXTERNAL:
            t.CopyFrom(weights[t.name])


def _nbytes(t: onnx.TensorProto) -> int:
    if t.raw_data:
        return len(t.raw_data)
    return 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data)
                                                              + len(t.double_data))


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def to_model(graph: gs.Graph, *, opset: int | None = None, keep_shapes: bool = False,
             metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Export a graph as a checked, self-contained model: IR 10, neuron functions attached."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    if not keep_shapes:
        outputs = set(map(id, graph.outputs)) | set(map(id, graph.inputs))
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Variable) and id(tensor) not in outputs:
                tensor.shape = None
    if opset is not None:
        graph.opset = opset
    graph.functions = []
    model = gs.export_onnx(graph, do_type_check=False)
    del model.functions[:]
    del model.graph.value_info[:]
    model.ir_version = IR_VERSION
    imports = [i for i in model.opset_import if i.domain not in (DOMAIN,)]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    model = ensure_functions(model)
    for key, value in (metadata or {}).items():
        set_metadata(model, key, value)
    return model


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               name: str = "output") -> Path:
    """Check and write a model atomically; nothing is left at ``path`` if this fails."""
    onnx.checker.check_model(model, full_check=True)
    return write_bytes(path, model.SerializeToString(), name=name)


def save_models(items: list[tuple[onnx.ModelProto, str | os.PathLike | None, str]]
                ) -> list[Path | None]:
    """Save several ``(model, path, option name)`` outputs of one run: all or none.

    Entries with ``path=None`` are skipped (their result is ``None``); if one write fails,
    the files already written by this call are removed again.
    """
    written: list[Path | None] = []
    try:
        for model, path, name in items:
            written.append(None if path is None else save_model(model, path, name=name))
    except BaseException:
        remove_quietly(written)
        raise
    return written


def uses_op(model: onnx.ModelProto, op_type: str) -> bool:
    return any(n.domain == DOMAIN and n.op_type == op_type for n in model.graph.node)


def is_snn(model: onnx.ModelProto) -> bool:
    return uses_op(model, IF_OP)


def is_streaming(model: onnx.ModelProto) -> bool:
    """A one-step streaming SNN (plain ops, membrane potentials as state)."""
    return get_metadata(model).get("onnx_rmpe.kind") == "snn-streaming"


def is_chunked(model: onnx.ModelProto) -> bool:
    """A chunked SNN (k steps per call, state carried between calls)."""
    return get_metadata(model).get("onnx_rmpe.kind") == "snn-chunked"


def is_qcfs(model: onnx.ModelProto) -> bool:
    return uses_op(model, QCFS_OP) and not is_snn(model)


def model_kind(model: onnx.ModelProto) -> str:
    """``snn-streaming``, ``snn-chunked``, ``snn-unrolled``, ``snn``, ``qcfs`` or ``ann``."""
    if is_streaming(model):
        return "snn-streaming"
    if is_chunked(model):
        return "snn-chunked"
    if get_metadata(model).get("onnx_rmpe.kind") == "snn-unrolled":
        return "snn-unrolled"
    if is_snn(model):
        return "snn"
    return "qcfs" if is_qcfs(model) else "ann"
