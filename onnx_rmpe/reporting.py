"""The report of an SNN: accuracy per step, firing rates, MACs vs. SynOps, energy, plots.

One pass over the data (batch by batch, memory independent of its size) records the
spikes of every IF layer of the SNN (multi-step: one run per batch with the IF outputs
exposed; streaming: stepped ``T`` times); from them:

* per spiking layer: neurons, mean firing rate (spikes per neuron per step), fraction of
  silent (never fired in ``T`` steps) and saturated (fired at every step) neurons, over
  all (sample, neuron) pairs;
* per linear layer: the ANN's multiply-accumulates (MACs) and the SNN's synaptic
  operations (SynOps), counted exactly (:mod:`onnx_rmpe.runtime.synops`); the first
  layer, fed by the analog input, costs MACs;
* energy per inference, ANN: ``MACs * E_MAC + adds * E_AC``; SNN after ``t`` steps:
  ``MACs(t) * E_MAC + SynOps(1..t) * E_AC``, with ``E_MAC = 4.6 pJ`` and
  ``E_AC = 0.9 pJ`` by default (45 nm CMOS, Horowitz 2014).

``report(...)`` returns a :class:`ReportResult`; with ``out_dir`` it also writes
``report.json`` and, with matplotlib installed (``onnx-rmpe[plot]``), three PNGs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx_rmpe.data import check_fits, load_data
from onnx_rmpe.errors import ConversionError, OptionError
from onnx_rmpe.modelio import get_metadata, is_snn, is_streaming, read_model, to_graph
from onnx_rmpe.passes.qcfs_to_if import PER_STEP_SUFFIX
from onnx_rmpe.runtime.activity import record, record_streaming
from onnx_rmpe.runtime.neurons import DOMAIN, IF_OP
from onnx_rmpe.runtime.plots import write_plots
from onnx_rmpe.runtime.session import Device
from onnx_rmpe.runtime.synops import linear_layers, spike_sources, tensor_shapes

logger = logging.getLogger(__name__)

ENERGY_SOURCE = "45 nm CMOS, Horowitz 2014 (ISSCC), 32-bit float"


@dataclass
class SpikingLayerStats:
    name: str
    neurons: int
    firing_rate: float
    silent_fraction: float
    saturated_fraction: float
    spikes_per_sample: float


@dataclass
class LinearLayerStats:
    """``synops``: per sample over all T steps; ``synops_per_step``: per sample, at step t."""

    name: str
    op: str
    inputs: str
    macs: int
    synops: float
    synops_per_step: list[float]
    sources: list[str]
    ann_adds: int = 0


@dataclass
class ReportResult:
    """Figures per inference (one sample); lists indexed by step ``t - 1``."""

    model: str
    T: int
    samples: int
    provider: str
    energy_mac_pj: float
    energy_ac_pj: float
    first_layer: str
    accuracy_per_step: list[float] = field(default_factory=list)
    ann_accuracy: float | None = None
    qcfs_accuracy: float | None = None
    spiking_layers: list[SpikingLayerStats] = field(default_factory=list)
    linear_layers: list[LinearLayerStats] = field(default_factory=list)
    ann_macs: int = 0
    ann_adds: int = 0
    snn_macs_per_step: list[float] = field(default_factory=list)
    synops_per_step: list[float] = field(default_factory=list)
    ann_energy_pj: float = 0.0
    snn_energy_pj_per_step: list[float] = field(default_factory=list)
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    note: str | None = None

    @property
    def synops_mac_ratio(self) -> list[float]:
        return [s / self.ann_macs for s in self.synops_per_step] if self.ann_macs else []

    @property
    def energy_ratio(self) -> list[float]:
        """SNN energy over ANN energy after each step."""
        return [e / self.ann_energy_pj for e in self.snn_energy_pj_per_step]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["files"] = [str(f) for f in self.files]
        out["synops_mac_ratio_per_step"] = self.synops_mac_ratio
        out["snn_ann_energy_ratio_per_step"] = self.energy_ratio
        out["energy_constants"] = {
            "mac_pj": self.energy_mac_pj, "ac_pj": self.energy_ac_pj, "source": ENERGY_SOURCE,
            "counted": "ANN: dense MACs of every linear layer (+ one add per element of an "
                       "identity shortcut); SNN: SynOps = spikes x fan-out, exact, summed over "
                       "steps 1..t; layers fed by the analog input or by a non-spiking signal "
                       f"cost MACs ({self.first_layer} for the first layer); biases, pooling, "
                       "normalization and neuron updates are not counted"}
        return out


def report(model: str | os.PathLike | onnx.ModelProto, data, *,
           qcfs: str | os.PathLike | onnx.ModelProto | None = None,
           ann: str | os.PathLike | onnx.ModelProto | None = None,
           out_dir: str | os.PathLike | None = None, energy_mac: float = 4.6,
           energy_ac: float = 0.9, first_layer_every_step: bool = True,
           batch_size: int = 128, samples: int | None = None, threads: int | None = None,
           device: Device = "cpu", progress: bool = False) -> ReportResult:
    """Firing rates, MACs vs. SynOps and energy of the SNN ``model`` on ``data``.

    ``model``: a multi-step SNN (one run per batch) or a streaming one (stepped T times).

    ``data``: path, array, ``(x, y)`` or Dataset; with labels ``y`` the accuracy after
    every step too (and of ``qcfs`` / ``ann``, given as models or paths, for reference).
    ``first_layer_every_step``: the layer fed by the analog input costs its MACs at every
    step (default; the ONNX SNN computes it once and reuses it: ``False`` counts that).
    ``out_dir``: write ``report.json`` and the PNGs there.
    """
    start = time.perf_counter()
    for name, value in (("energy_mac", energy_mac), ("energy_ac", energy_ac)):
        if not value > 0:
            raise OptionError(name, f"energies must be positive (pJ), got {value}")
    proto, source = read_model(model)
    streaming = is_streaming(proto)
    if not streaming and not is_snn(proto):
        raise ConversionError(f"'{source}' is not an SNN (no IFNeuron layer); convert it "
                              "first: onnx-rmpe convert MODEL.onnx --T 4 --calib CALIB.npz")
    ds = load_data(data).head(samples)
    check_fits(ds, proto)
    shapes = tensor_shapes(proto, ds.x)
    layers = linear_layers(proto, shapes)
    spikes = {tensor: name for tensor, (name, _) in spike_sources(to_graph(proto)).items()}
    T = _steps(proto, streaming)
    options = dict(spikes=list(spikes), shapes={s: shapes[s][1:] for s in spikes}, T=T,
                   batch_size=batch_size, threads=threads, device=device, progress=progress)
    if streaming:
        counter, accuracy, provider = record_streaming(proto, ds.x, ds.y, **options)
    else:
        counter, accuracy, provider = record(
            proto, ds.x, ds.y, per_step_output=proto.graph.output[0].name + PER_STEP_SUFFIX,
            **options)
    result = ReportResult(source, T, len(ds), provider, energy_mac, energy_ac,
                          "at every step" if first_layer_every_step else "once",
                          accuracy_per_step=accuracy.accuracy())
    _fill(result, counter, layers, spikes, first_layer_every_step)
    if ds.y is not None:
        result.qcfs_accuracy = _accuracy(qcfs, ds, batch_size, threads, device)
        result.ann_accuracy = _accuracy(ann, ds, batch_size, threads, device)
    if out_dir is not None:
        write_report(result, out_dir)
    result.seconds = time.perf_counter() - start
    logger.info("report of %s on %d samples: %d spiking, %d linear layer(s), %.1fs", source,
                len(ds), len(result.spiking_layers), len(result.linear_layers), result.seconds)
    return result


def _steps(proto: onnx.ModelProto, streaming: bool) -> int:
    if streaming:
        T = int(get_metadata(proto).get("onnx_rmpe.T", 0))
        if T < 1:
            raise ConversionError("streaming SNN without 'onnx_rmpe.T' in its metadata")
        return T
    node = next(n for n in proto.graph.node if n.op_type == IF_OP and n.domain == DOMAIN)
    return int(next(a.i for a in node.attribute if a.name == "T"))


def _fill(result: ReportResult, counter, layers, spikes: dict[str, str],
          first_every_step: bool) -> None:
    n, T = counter.samples, counter.T
    for tensor, name in spikes.items():
        per_step = counter.per_step[tensor]
        neurons = int(np.prod(per_step.shape[1:]))
        total = int(per_step.sum())
        result.spiking_layers.append(SpikingLayerStats(
            name, neurons, total / (neurons * T * n), counter.silent[tensor] / (neurons * n),
            counter.saturated[tensor] / (neurons * n), total / n))
    steps = np.arange(1, T + 1, dtype=np.float64)
    synops = np.zeros(T)
    snn_macs = np.zeros(T)
    for layer in layers:
        per_step = np.zeros(T)
        if layer.inputs == "spikes":
            per_step = layer.synops_per_step(counter.per_step) / n
            synops += per_step
        elif layer.inputs == "static":
            snn_macs += layer.macs * (steps if first_every_step else 1.0)
        else:
            snn_macs += layer.macs * steps
        result.linear_layers.append(LinearLayerStats(
            layer.name, layer.op, layer.inputs, layer.macs, float(per_step.sum()),
            per_step.tolist(), [spikes[s] for s in layer.fanouts], layer.ann_adds))
        result.ann_macs += layer.macs
        result.ann_adds += layer.ann_adds
    result.synops_per_step = np.cumsum(synops).tolist()
    result.snn_macs_per_step = snn_macs.tolist()
    result.ann_energy_pj = result.ann_macs * result.energy_mac_pj \
        + result.ann_adds * result.energy_ac_pj
    result.snn_energy_pj_per_step = (snn_macs * result.energy_mac_pj
                                     + np.cumsum(synops) * result.energy_ac_pj).tolist()


def _accuracy(model, ds, batch_size: int, threads: int | None, device: Device) -> float | None:
    if model is None:
        return None
    from onnx_rmpe.evaluation import evaluate

    return evaluate(model, ds, batch_size=batch_size, threads=threads, device=device).accuracy


def write_report(result: ReportResult, out_dir: str | os.PathLike) -> None:
    """``report.json`` and (with matplotlib) the PNGs; sets ``result.files``/``note``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, note = write_plots(result, out)
    result.files, result.note = [out / "report.json", *files], note
    path = out / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.as_dict(), indent=2, default=str) + "\n")
    tmp.replace(path)
