"""Where a fine-tuned QCFS net loses accuracy as an SNN at T = L (issue 11, goal 3).

An independent reference: a plain-torch, step-by-step IF simulation of the QCFS ONNX graph
(threshold ``lam``, ``v(0) = lam / 2 (+ v_init)``, reset by subtraction; Conv, pools,
Flatten and Gemm on the spikes of each step; logits averaged over T), written from the
method's equations without onnx-rmpe's runtime. It is compared with ``convert``'s SNN in
onnxruntime (``rmpe=False`` and RMPE, the calibrated ``v_init`` read from the SNN), and
layer by layer: each layer's rate against the QCFS ANN's activation ("global") and
against ``h(mean_t x(t))``, the QCFS function of the current the layer actually received
("local": the error this layer adds by its uneven input). The reference also computes
RMPE itself (closed form, layer by layer, on the same calibration images, without
convert's acceptance check). ``signed`` is a what-if neuron, not in onnx-rmpe: a neuron
that has fired and whose potential falls below 0 emits a negative spike (``v += lam``),
as in signed neurons with memory (Wang et al. 2022).

Usage::

    python benchmarks/snn_gap.py --model QCFS.onnx [--T 4] [--samples 2000]
        [--out benchmarks/results/snn_gap.md]
"""

from __future__ import annotations

import argparse
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


def load(path: str) -> tuple[onnx.ModelProto, dict]:
    m = onnx.load(path)
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in m.graph.initializer}
    return m, w


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def forward(m, w, x, state: dict | None = None, *, v_init=None, signed=False, trace=None):
    """One pass: the QCFS ANN (``state`` None) or one SNN step (``state``: potentials)."""
    env = dict(w)
    env[m.graph.input[0].name] = x
    for n in m.graph.node:
        a, i = _attrs(n), [env[k] if k else None for k in n.input]
        if n.op_type == "Conv":
            p = a.get("pads", [0, 0, 0, 0])
            y = F.conv2d(i[0], i[1], i[2] if len(i) > 2 else None, stride=a.get("strides", 1),
                         padding=(p[0], p[1]), groups=a.get("group", 1))
        elif n.op_type in ("AveragePool", "MaxPool"):
            pool = F.avg_pool2d if n.op_type == "AveragePool" else F.max_pool2d
            y = pool(i[0], a["kernel_shape"], a.get("strides"))
        elif n.op_type == "Flatten":
            y = i[0].flatten(a.get("axis", 1))
        elif n.op_type == "Gemm":
            y = i[0] @ (i[1].T if a.get("transB", 0) else i[1]) + i[2]
        elif n.op_type == "QCFS":
            y = _neuron(n, a, i[0], i[1], state, v_init, signed)
            if trace is not None:
                trace.setdefault(n.name, []).append((i[0], y))
        else:
            raise NotImplementedError(f"{n.op_type} (this reference handles VGG-like chains)")
        env[n.output[0]] = y
    return env[m.graph.output[0].name]


def _neuron(n, a, z, lam, state, v_init, signed):
    L, phi = a["levels"], a.get("phi", 0.5)
    if state is None:
        return lam * torch.clamp(torch.floor(z * L / lam + phi) / L, 0, 1)
    if n.name not in state:
        extra = 0 if v_init is None else v_init.get(n.name, 0)
        state[n.name] = (torch.full_like(z, phi) * lam + extra, torch.zeros_like(z))
    v, count = state[n.name]
    v = v + z
    s = (v >= lam).to(z.dtype)
    if signed:
        s = s - ((v < 0) & (count > 0)).to(z.dtype)
    state[n.name] = (v - s * lam, count + s)
    return s * lam


def simulate(m, w, x, T, **kw):
    state, total, trace = {}, 0, {}
    for _ in range(T):
        total = total + forward(m, w, x, state, trace=trace, **kw)
    return total / T, trace


def reference_rmpe(m, w, xc, T, *, signed=False) -> dict:
    """RMPE in the reference: ``v_init = T (E[a_ANN] - E[r_SNN])`` per neuron, layer by
    layer from the input (each layer measured with the earlier ones calibrated)."""
    ann = {}
    forward(m, w, xc, None, trace=ann)
    v_init: dict = {}
    for n in (n for n in m.graph.node if n.op_type == "QCFS"):
        _, trace = simulate(m, w, xc, T, v_init=v_init, signed=signed)
        rate = torch.stack([y for _, y in trace[n.name]]).mean(0)
        v_init[n.name] = T * (ann[n.name][0][1] - rate).mean(0)
    return v_init


def layer_rows(m, w, x, T, v_init=None) -> list[str]:
    ann = {}
    forward(m, w, x, None, trace=ann)
    _, trace = simulate(m, w, x, T, v_init=v_init)
    rows = []
    for n in (n for n in m.graph.node if n.op_type == "QCFS"):
        lam, L = float(w[n.input[1]]), _attrs(n)["levels"]
        a = ann[n.name][0][1]
        r = torch.stack([y for _, y in trace[n.name]]).mean(0)
        zbar = torch.stack([z for z, _ in trace[n.name]]).mean(0)
        h = lam * torch.clamp(torch.floor(zbar * L / lam + 0.5) / L, 0, 1)
        z_std = torch.stack([z for z, _ in trace[n.name]]).std(0)[a > 0].mean() / lam
        silent = a == 0
        rows.append(f"| {n.name} | {lam:.3f} | {float(a.mean()) / lam:.3f} | "
                    f"{float(r.mean()) / lam:.3f} | {_rel(r, a):.3f} | {_rel(r, h):.3f} | "
                    f"{float((r[silent] > 0).float().mean()):.3f} | {float(z_std):.3f} |")
    return rows


def _rel(u, v) -> float:
    return float((u - v).norm() / v.norm())



def v_inits(snn: onnx.ModelProto) -> dict:
    inits = {i.name: i for i in snn.graph.initializer}
    return {n.name: torch.from_numpy(numpy_helper.to_array(inits[n.input[2]]).copy())
            for n in snn.graph.node if n.op_type == "IFNeuron"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="/work/shared/data/fashion_mnist.npz")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--samples", type=int, default=2000, help="first test images")
    p.add_argument("--calib", type=int, default=512, help="RMPE images (seed-0 10k subset)")
    p.add_argument("--out", default="benchmarks/results/snn_gap.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    d = np.load(args.data)
    scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
    xt, yt = scale(d["x_test"][:args.samples]), d["y_test"][:args.samples]
    xc = scale(d["x_train"][np.random.default_rng(0).permutation(60000)[:10_000]])
    m, w = load(args.model)
    T, X = args.T, torch.from_numpy(xt)
    acc = lambda out: float((out.argmax(-1).numpy() == yt).mean())  # noqa: E731
    rmpe = convert(args.model, T=T, calib=xc, calib_samples=args.calib, threads=1).snn
    plain = convert(args.model, T=T, rmpe=False).snn
    vi = v_inits(rmpe)
    with torch.no_grad():
        rows = [("QCFS ANN", acc(forward(m, w, X)), ort_accuracy(onnx.load(args.model), xt, yt)),
                ("SNN, plain", acc(simulate(m, w, X, T)[0]), ort_accuracy(plain, xt, yt)),
                ("SNN, RMPE (reference with convert's v_init)",
                 acc(simulate(m, w, X, T, v_init=vi)[0]), ort_accuracy(rmpe, xt, yt)),
                ("SNN, signed neurons (what-if, plain)", acc(simulate(m, w, X, T, signed=True)[0]),
                 None)]
        xcal = torch.from_numpy(xc[:args.calib])
        for signed in (False, True):
            vs = reference_rmpe(m, w, xcal, T, signed=signed)
            rows.append((f"SNN, {'signed neurons' if signed else 'IF'} + RMPE computed in the "
                         "reference (no acceptance check)",
                         acc(simulate(m, w, X, T, v_init=vs, signed=signed)[0]), None))
        head = ["| layer | lam | ANN mean/lam | SNN rate/lam | global rel. error | "
                "local rel. error | ANN-silent that fire | per-step current std/lam |",
                "|---|---|---|---|---|---|---|---|"]
        tables = {name: head + layer_rows(m, w, X, T, v) for name, v in
                  (("plain", None), ("RMPE", vi))}
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"## {Path(args.model).name}, T={T} ({date})",
             "", f"Command: `python benchmarks/snn_gap.py --model {args.model} --T {T} "
             f"--samples {args.samples}`; first {args.samples} test images.", "",
             "| network | reference (torch) | convert (onnxruntime) |", "|---|---|---|"]
    lines += [f"| {r} | {100 * a:.2f} | {'-' if b is None else f'{100 * b:.2f}'} |"
              for r, a, b in rows]
    for name, table in tables.items():
        lines += ["", f"Layers, {name} SNN:", "", *table]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.write_text((out.read_text() + "\n" if out.exists() else "") + text)
    print(text)


if __name__ == "__main__":
    main()
