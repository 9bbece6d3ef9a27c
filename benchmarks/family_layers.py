"""Layer-by-layer diagnosis of the post-training QCFS ANN of a family net (issue 16).

For each activation of a cached ``family_nets.py`` net (L = 8, 99.9th-percentile
thresholds from 512 training images): the node making its input, its channel count, the
layer threshold ``lam``, the channels' own 99.9th percentiles (min / median / max), the
layer's isolated relative error ``|h(z) - relu(z)| / |relu(z)|`` on the ReLU ANN's
pre-activations with one threshold per layer and with one per channel, and the test
accuracy (%) of the net when only this layer is QCFS (one threshold per layer, the others
ReLU). Then the accuracy of the whole QCFS ANN with one threshold per layer and per
channel (``build_qcfs(per_channel=...)``). Accuracy on the first ``--test`` test images,
onnxruntime threads 1.

Usage::

    python benchmarks/family_layers.py --nets densenet,mobilenetv2,resnet18 [--test 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_nets import DATA, cache_name, load_fashion  # noqa: E402
from fashion_nets import CACHE  # noqa: E402

from onnx_rmpe.data import Dataset  # noqa: E402
from onnx_rmpe.ops import DOMAIN, QCFS_OP  # noqa: E402
from onnx_rmpe.pipeline import build_qcfs  # noqa: E402
from onnx_rmpe.runtime.statistics import expose_outputs  # noqa: E402
from onnx_rmpe.thresholds import relu_reference  # noqa: E402

LEVELS, CALIB, SEED = 8, 512, 0


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    s = _session(model)
    return float((s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1) == y).mean() * 100)


def _only(qcfs: onnx.ModelProto, keep: str) -> onnx.ModelProto:
    """``qcfs`` with every QCFS node but ``keep`` back to Relu."""
    model = onnx.ModelProto.FromString(qcfs.SerializeToString())
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == QCFS_OP and node.name != keep:
            data = node.input[0]
            del node.input[:], node.attribute[:]
            node.input.append(data)
            node.op_type, node.domain = "Relu", ""
    return model


def _qcfs(z: np.ndarray, lam) -> np.ndarray:
    return lam * np.clip(np.floor(z * LEVELS / lam + 0.5) / LEVELS, 0, 1)


def diagnose(name: str, xcal: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> list[str]:
    relu0 = onnx.load(str(CACHE / f"{cache_name(name)}.onnx"))
    qcfs, lams = build_qcfs(relu0, Dataset(xcal), levels=LEVELS, threads=1, per_channel=False)
    channel, _ = build_qcfs(relu0, Dataset(xcal), levels=LEVELS, threads=1)
    relu = relu_reference(qcfs)
    nodes = [n for n in qcfs.graph.node if n.domain == DOMAIN and n.op_type == QCFS_OP]
    pre = [n.input[0] for n in nodes]
    s = _session(expose_outputs(relu, pre))
    outs = s.run(pre, {s.get_inputs()[0].name: xcal})
    makers = {o: n.op_type for n in relu.graph.node for o in n.output}
    rows = [f"### {cache_name(name)}", "",
            f"ReLU ANN {_accuracy(relu0, xt, yt):.2f} %; QCFS ANN (L={LEVELS}) one threshold "
            f"per layer {_accuracy(qcfs, xt, yt):.2f} %, per channel "
            f"{_accuracy(channel, xt, yt):.2f} %", "",
            "| activation | made by | C | lam | channel p99.9 min / median / max | "
            "rel. error per layer | per channel | accuracy, only this layer QCFS |",
            "|---|---|---|---|---|---|---|---|"]
    for node, z in zip(nodes, outs):
        lam = lams[node.name]
        zc = np.moveaxis(z, 1, 0).reshape(z.shape[1], -1)
        pc = np.array([np.percentile(c[c > 0], 99.9) if (c > 0).any() else np.nan for c in zc])
        cap = 6.0 if "Clip" in node.name else np.inf  # the families' only Clip is ReLU6
        lam_c = np.where(np.isfinite(pc), np.minimum(pc, cap), lam).reshape(
            (-1,) + (1,) * (z.ndim - 2))
        r = np.maximum(z, 0)
        norm = max(float(np.linalg.norm(r)), 1e-12)
        err = float(np.linalg.norm(_qcfs(z, lam) - r)) / norm
        err_c = float(np.linalg.norm(_qcfs(z, lam_c) - r)) / norm
        rows.append(f"| {node.name} | {makers[node.input[0]]} | {z.shape[1]} | {lam:.2f} | "
                    f"{np.nanmin(pc):.2f} / {np.nanmedian(pc):.2f} / {np.nanmax(pc):.2f} | "
                    f"{err:.3f} | {err_c:.3f} | {_accuracy(_only(qcfs, node.name), xt, yt):.1f} |")
    return rows + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="densenet,mobilenetv2,resnet18")
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", default="benchmarks/results/family_layers.md")
    args = p.parse_args()
    xtr, _, xte, yte = load_fashion(args.data)
    xcal = xtr[np.random.default_rng(SEED).permutation(len(xtr))[:CALIB]]
    cmd = "python benchmarks/family_layers.py " + " ".join(sys.argv[1:])
    out = ["# Family nets: the QCFS ANN layer by layer (issue 16)", "",
           f"Command: `{cmd}`; machine: 2-core shared CPU, no GPU; date: "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; first {args.test} test "
           f"images; {CALIB} calibration images; L = {LEVELS}.", ""]
    for name in args.nets.split(","):
        out += diagnose(name, xcal, xte[:args.test], yte[:args.test])
        print("\n".join(out[-30:]), flush=True)
    Path(args.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
