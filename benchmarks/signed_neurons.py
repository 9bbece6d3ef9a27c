"""Signed IF neurons on post-training conversions: a what-if measurement (issue 11, goal 2).

``benchmarks/snn_gap.py`` found that a signed neuron (one that has fired and whose
potential falls below 0 emits a negative spike, ``v += theta``; Wang et al. 2022) recovers
the QCFS ANN at T = L on a fine-tuned net. This script asks the same of the *post-training*
default ``convert`` (L=8, thresholds refined for T, weight reconstruction, RMPE) of the
12-epoch Fashion-MNIST nets: is the neuron model the lever for goal 2?

An independent plain-torch reference runs the converted SNN graph itself (its weights,
thresholds and ``v_init`` initializers), one time step after the other, with the IF neuron
``v(0) = phi theta + v_init``, ``v += x``, spike at ``v >= theta``, reset by subtraction,
or the signed variant; logits averaged over T. Its plain IF row with convert's ``v_init``
must equal the SNN's onnxruntime accuracy (checked in the table). For each net and T it
converts twice: the default (``reconstruct="auto"``: refitted weights) and
``reconstruct="none"``, and reports, on the first ``--samples`` test images:
the RMPE target ANN (QCFS, ``max(8, T)`` levels, the SNN's thresholds), the SNN in
onnxruntime, the reference IF with and without convert's potentials, signed neurons with
none, with convert's (calibrated for IF neurons) and with RMPE recomputed for signed
neurons in the reference (closed form ``T (E[a] - E[r])`` per neuron, layer by layer, on
the same 512 calibration images, no acceptance check).

Usage::

    python benchmarks/signed_neurons.py [--nets vgg_bn_avg,resnet] [--steps 2,4,8]
        [--samples 2000] [--jsonl benchmarks/results/signed_neurons.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from onnx_rmpe.conversion import convert

sys.path.insert(0, str(Path(__file__).parent))
from fashion_nets import ort_accuracy  # noqa: E402

CACHE = Path(os.environ.get("ONNX_RMPE_BENCH_CACHE", Path.home() / ".cache/onnx-rmpe-bench"))
CALIB = 512
LEVELS = 8  # convert's post-training L


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class Reference:
    """The SNN graph of ``convert`` (multistep form: time stacked on the batch axis) in torch.

    Node after node, as the ONNX graph runs: the first layer's input tiled over T, every
    layer on all T steps at once, each neuron stepping through its T currents in order.
    ``ann`` runs the same graph once with the QCFS function (``levels``) in place of
    the neurons. ``rmpe`` sets each neuron's ``v_init`` when the run reaches it.
    """

    def __init__(self, snn: onnx.ModelProto):
        self.m = snn
        self.w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
                  for i in snn.graph.initializer}
        shape = next(n for n in snn.graph.node if n.name == "logits_shape_node")
        self.out = shape.input[0]  # the per-step logits, before the running mean
        self.nodes = []
        for n in snn.graph.node:
            self.nodes.append(n)
            if self.out in n.output:
                break
        self.neurons = [n for n in self.nodes if n.op_type == "IFNeuron"]

    def v_init(self) -> dict:
        return {n.name: self.w[n.input[2]] for n in self.neurons}

    def run(self, x, T: int, *, levels: int = 0, v_init=None, signed=False, rmpe=None,
            trace=None):
        """Logits averaged over T (``levels`` > 0: the QCFS ANN, T ignored).

        ``rmpe``: the ANN's activations per neuron; each neuron's ``v_init`` becomes
        ``T (E[a] - E[r])`` (mean over the batch) before it runs, written into ``v_init``.
        """
        env = dict(self.w)
        env[self.m.graph.input[0].name] = x
        steps = 1 if levels else T
        for n in self.nodes:
            a, i = _attrs(n), [env[k] if k else None for k in n.input]
            if n.op_type == "Concat" and len(set(n.input)) == 1:
                y = torch.cat([i[0]] * steps, a.get("axis", 0))
            elif n.op_type != "IFNeuron":
                y = _op(n, a, i)
            elif levels:
                lam, phi = i[1], a.get("phi", 0.5)
                y = lam * torch.clamp(torch.floor(i[0] * levels / lam + phi) / levels, 0, 1)
            else:
                z = i[0].reshape(T, -1, *i[0].shape[1:])
                if rmpe is not None:
                    rate = _if(z, i[1], a, 0, signed).mean(0)
                    v_init[n.name] = T * (rmpe[n.name] - rate).mean(0)
                extra = 0 if v_init is None else v_init.get(n.name, 0)
                y = _if(z, i[1], a, extra, signed).reshape(i[0].shape)
            if trace is not None and n.op_type == "IFNeuron":
                trace[n.name] = y
            env[n.output[0]] = y
        out = env[self.out]
        return out.reshape(steps, -1, *out.shape[1:]).mean(0)

    def rmpe(self, xc, T: int, *, signed: bool) -> dict:
        """RMPE in the reference, layer by layer from the input (each layer measured with
        the earlier ones calibrated), closed form, no acceptance check."""
        ann: dict = {}
        self.run(xc, 1, levels=max(LEVELS, T), trace=ann)
        v_init: dict = {}
        self.run(xc, T, v_init=v_init, signed=signed, rmpe=ann)
        return v_init


def _if(z, lam, a: dict, v_init, signed: bool):
    """IF (or signed IF) neuron over ``z[t]``, t = 0..T-1: ``[T, N, ...]`` spikes x lam."""
    phi = a.get("phi", 0.5)
    v = torch.full_like(z[0], phi) * lam + v_init
    count = torch.zeros_like(z[0])
    out = []
    for t in range(z.shape[0]):
        v = v + z[t]
        s = (v >= lam).to(z.dtype)
        if signed:
            s = s - ((v < 0) & (count > 0)).to(z.dtype)
        v, count = v - s * lam, count + s
        out.append(s * lam)
    return torch.stack(out)


def _op(n, a, i):
    t = n.op_type
    if t == "Concat" and len(set(n.input)) == 1:  # the input tiled over T: one step here
        return i[0]
    if t == "Conv":
        p = a.get("pads", [0, 0, 0, 0])
        assert p[0] == p[2] and p[1] == p[3], "asymmetric pads"
        return F.conv2d(i[0], i[1], i[2] if len(i) > 2 else None, stride=a.get("strides", 1),
                        padding=(p[0], p[1]), dilation=a.get("dilations", 1),
                        groups=a.get("group", 1))
    if t in ("AveragePool", "MaxPool"):
        p = a.get("pads", [0, 0, 0, 0])
        if t == "MaxPool":
            return F.max_pool2d(i[0], a["kernel_shape"], a.get("strides"), (p[0], p[1]))
        return F.avg_pool2d(i[0], a["kernel_shape"], a.get("strides"), (p[0], p[1]),
                            count_include_pad=bool(a.get("count_include_pad", 0)))
    if t == "GlobalAveragePool":
        return i[0].mean((2, 3), keepdim=True)
    if t == "Flatten":
        return i[0].flatten(a.get("axis", 1))
    if t == "Gemm":
        return i[0] @ (i[1].T if a.get("transB", 0) else i[1]) + i[2]
    if t == "Add":
        return i[0] + i[1]
    if t == "Mul":
        return i[0] * i[1]
    raise NotImplementedError(f"{t} ({n.name}): not in this reference")



def measure(snn: onnx.ModelProto, T: int, xt, yt, xc, batch: int = 250) -> dict:
    ref = Reference(snn)
    vi = ref.v_init()

    def acc(**kw) -> float:
        pred = np.concatenate([ref.run(torch.from_numpy(xt[i:i + batch]), T, **kw)
                               .argmax(-1).numpy() for i in range(0, len(xt), batch)])
        return float((pred == yt).mean())

    with torch.no_grad():
        vs = ref.rmpe(torch.from_numpy(xc), T, signed=True)
        return {"target_ann": acc(levels=max(LEVELS, T)),
                "ort": ort_accuracy(snn, xt, yt),
                "if_rmpe": acc(v_init=vi),
                "if_plain": acc(),
                "signed_plain": acc(signed=True),
                "signed_convert_rmpe": acc(v_init=vi, signed=True),
                "signed_ref_rmpe": acc(v_init=vs, signed=True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="vgg_bn_avg,resnet")
    p.add_argument("--steps", default="2,4,8")
    p.add_argument("--reconstruct", default="auto,none")
    p.add_argument("--data", default="/work/shared/data/fashion_mnist.npz")
    p.add_argument("--samples", type=int, default=2000, help="first test images")
    p.add_argument("--jsonl", default="benchmarks/results/signed_neurons.jsonl")
    args = p.parse_args()
    torch.set_num_threads(1)
    d = np.load(args.data)
    scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
    xt, yt = scale(d["x_test"][:args.samples]), d["y_test"][:args.samples].astype(np.int64)
    xc = scale(d["x_train"][np.random.default_rng(0).permutation(60000)[:CALIB]])
    for rec in args.reconstruct.split(","):
        for net in args.nets.split(","):
            for T in (int(t) for t in args.steps.split(",")):
                start = time.perf_counter()
                snn = convert(CACHE / f"{net}.onnx", T=T, calib=xc, calib_samples=CALIB,
                              reconstruct=rec, threads=1).snn
                row = dict(net=net, T=T, reconstruct=rec, samples=args.samples,
                           convert_s=time.perf_counter() - start)
                row.update(measure(snn, T, xt, yt, xc))
                row.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           load=os.getloadavg()[0])
                print(json.dumps(row), flush=True)
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
