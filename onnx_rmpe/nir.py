"""Export a converted SNN to NIR (the Neuromorphic Intermediate Representation).

``export_nir`` reads a multi-step SNN written by :func:`onnx_rmpe.convert`, describes its
layers as NIR nodes (:mod:`onnx_rmpe.nir_walk`), carries the initial potentials as a
first-step current (:mod:`onnx_rmpe.nir_state`), checks that nothing NIR cannot express
remains (all offending nodes listed, nothing written), writes the file atomically and
reads it back with ``nir.read``. ``describe_nir`` lists a NIR file's nodes and edges.

What the NIR graph means, per sample and time step ``t = 1..T``: the input is fed at every
step (direct encoding); each ``IF`` node integrates the sum of its incoming edges and emits
spikes; the ``Output`` is the readout layer's value at step ``t``, and the SNN's logits are
its mean over the ``T`` steps. The SNN resets by subtraction and fires at ``v >= theta``;
NIR 1.0 defines ``IF`` with a reset *to* ``v_reset`` and ``v > v_threshold``, and has no
reset-by-subtraction neuron: the graph metadata says ``reset = subtract`` and importers
must be told (see the README section "Neuromorphic hardware (NIR)").
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx_rmpe.errors import ConversionError, MissingDependencyError, ModelLoadError
from onnx_rmpe.modelio import (
    get_metadata,
    is_snn,
    is_streaming,
    neuron_attributes,
    read_model,
    to_graph,
)
from onnx_rmpe.nir_state import add_initial_potentials
from onnx_rmpe.nir_walk import walk
from onnx_rmpe.runtime.neurons import IF_OP
from onnx_rmpe.version import __version__

logger = logging.getLogger(__name__)


@dataclass
class NirExportResult:
    """What was written: the file, T, and the graph's nodes and edges."""

    path: str
    T: int
    nodes: dict[str, str] = field(default_factory=dict)  # name -> NIR type
    edges: list[tuple[str, str]] = field(default_factory=list)
    if_layers: list[str] = field(default_factory=list)
    initial_potentials: int = 0


@dataclass
class NirInfo:
    """A NIR file's nodes (name, type, shape), edges and graph metadata."""

    path: str
    version: str
    nodes: list[tuple[str, str, list]] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(vars(self))


def _nir():
    try:
        import nir
    except ImportError:
        raise MissingDependencyError("nir", "nir", "NIR export") from None
    return nir


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Per-sample shape of every tensor of the main graph (one zero sample in onnxruntime)."""
    from onnx_rmpe.runtime.session import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    names = [t for n in probe.graph.node for t in n.output if t and t not in known]
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names)
    session = make_session(probe, threads=1)
    inp = session.get_inputs()[0]
    dims = [1 if not isinstance(d, int) else d for d in inp.shape]
    values = session.run(None, {inp.name: np.zeros(dims, np.float32)})
    shapes = {inp.name: tuple(dims[1:])}
    for out, value in zip(session.get_outputs(), values):
        shapes[out.name] = tuple(np.shape(value)[1:])
    return shapes


def export_nir(model: str | os.PathLike | onnx.ModelProto,
               output: str | os.PathLike) -> NirExportResult:
    """Write the multi-step SNN ``model`` as a NIR graph to ``output`` (see module doc)."""
    nir = _nir()
    proto, name = read_model(model)
    if is_streaming(proto) or not is_snn(proto):
        raise ModelLoadError(name, "not a multi-step SNN; convert it first "
                                   "(onnx-rmpe convert MODEL.onnx --T 4 --calib CALIB.npz)")
    T = int(neuron_attributes(proto, IF_OP)["T"])
    if len([i for i in proto.graph.input
            if i.name not in {t.name for t in proto.graph.initializer}]) != 1:
        raise ConversionError(f"'{name}': NIR export needs a model with exactly one input")
    parts = walk(to_graph(proto), tensor_shapes(proto), T)
    carried = add_initial_potentials(parts, T)
    meta = {"generator": f"onnx-rmpe {__version__}", "source": Path(name).name, "T": T,
            "reset": "subtract", "threshold": "v >= v_threshold",
            "readout": "mean of the output over T steps", "input": "fed at every step",
            "initial_potential": "first-step current from the clock.* neurons",
            **{k: v for k, v in get_metadata(proto).items() if k.startswith("onnx_rmpe.")}}
    graph = nir.NIRGraph(nodes=parts.nodes, edges=parts.edges, metadata=meta)
    _write(nir, graph, Path(output))
    logger.info("wrote NIR %s: %d nodes, %d edges, %d IF layer(s)", output, len(parts.nodes),
                len(parts.edges), len(parts.neurons))
    return NirExportResult(str(output), T, {k: type(v).__name__ for k, v in parts.nodes.items()},
                           list(parts.edges), [n for n, _ in parts.neurons], carried)


def _write(nir, graph, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".nir.tmp", dir=path.parent or Path("."))
    os.close(fd)
    try:
        nir.write(tmp, graph)
        nir.read(tmp)  # the file must read back (structure and types) before it is kept
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def describe_nir(path: str | os.PathLike) -> NirInfo:
    """Nodes, edges and metadata of the NIR file ``path``."""
    nir = _nir()
    if not Path(path).is_file():
        raise ModelLoadError(str(path), "no such file")
    try:
        graph = nir.read(str(path))
    except Exception as exc:  # noqa: BLE001 - h5py raises many types
        raise ModelLoadError(str(path), f"not a NIR file ({type(exc).__name__}: {exc})") \
            from None
    info = NirInfo(str(path), str(getattr(nir, "version", "?")))
    for key, node in graph.nodes.items():
        shape = node.output_type.get("output") if isinstance(node.output_type, dict) else None
        info.nodes.append((key, type(node).__name__,
                           [int(d) for d in shape] if shape is not None else []))
    info.edges = [(str(a), str(b)) for a, b in graph.edges]
    info.metadata = {str(k): v.item() if hasattr(v, "item") else v
                     for k, v in (graph.metadata or {}).items()}
    return info
