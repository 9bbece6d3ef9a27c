"""SNN cost report on Fashion-MNIST (issue 12): SynOps/MAC and energy ratios at T = 1, 2, 4, 8.

Trains the VGG-like and ResNet-like nets of ``rmpe_fashion.py`` on all 60,000 training
images (cached in ``~/.cache/onnx-rmpe-bench/``), converts each with the default
``convert`` (post-training QCFS L=8, RMPE calibrated for each T on 512 training images)
and runs :func:`onnx_rmpe.report` on the 10,000 test images: accuracy, total SynOps per
inference against the ANN's MACs, and the SNN/ANN energy ratio (4.6 pJ/MAC, 0.9 pJ/AC),
with the first layer's MACs counted at every step (default) and once. Writes
``benchmarks/results/report_fashion.md`` / ``.json`` and the report folder of the VGG-like
T=8 SNN to ``/tmp/report_fashion_vgg_T8`` (its accuracy-vs-T PNG is the one in docs/).

Usage::

    python benchmarks/report_fashion.py [--epochs 3] [--nets vgg,resnet]
                                        [--train-samples 60000] [--test-samples 10000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).parent))
from rmpe_fashion import export, resnet_like, train, vgg_like  # noqa: E402

from onnx_rmpe import convert, evaluate, report  # noqa: E402

STEPS = (1, 2, 4, 8)
CACHE = Path.home() / ".cache" / "onnx-rmpe-bench"
THREADS = 1
SEED = 0


def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def trained(name: str, make, x: np.ndarray, y: np.ndarray, epochs: int) -> onnx.ModelProto:
    path = CACHE / f"report_{name}_n{len(x)}_e{epochs}.onnx"
    if path.is_file():
        log(f"{name}: cached {path}")
        return onnx.load(str(path))
    net, seconds = train(make(), x, y, epochs)
    model = export(net, x)
    CACHE.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    log(f"{name}: trained {epochs} epochs in {seconds:.0f}s -> {path}")
    return model


def run_net(name: str, ann: onnx.ModelProto, xcal, test, batch: int) -> dict:
    row: dict = {"model": name, "ann": evaluate(ann, test, threads=THREADS).accuracy, "T": {}}
    for T in STEPS:
        start = time.perf_counter()
        res = convert(ann, T=T, calib=xcal, levels=8, threads=THREADS)
        out = Path(f"/tmp/report_fashion_{name}_T{T}")
        rep = report(res.snn, test, qcfs=res.qcfs, ann=ann, out_dir=out, threads=THREADS,
                     batch_size=batch)
        row["qcfs"] = rep.qcfs_accuracy
        first = sum(la.macs for la in rep.linear_layers if la.inputs == "static")
        once = rep.snn_energy_pj_per_step[-1] - (T - 1) * first * rep.energy_mac_pj
        row["T"][T] = {
            "accuracy": rep.accuracy_per_step[-1], "rmpe": res.calibration.accepted,
            "ann_macs": rep.ann_macs, "synops": rep.synops_per_step[-1],
            "synops_mac_ratio": rep.synops_mac_ratio[-1], "first_layer_macs": first,
            "ann_energy_uj": rep.ann_energy_pj / 1e6,
            "snn_energy_uj": rep.snn_energy_pj_per_step[-1] / 1e6,
            "energy_ratio": rep.energy_ratio[-1], "energy_ratio_first_once":
                once / rep.ann_energy_pj,
            "firing_rates": {la.name: la.firing_rate for la in rep.spiking_layers},
            "report_seconds": rep.seconds, "seconds": time.perf_counter() - start}
        log(name, f"T={T}: acc {rep.accuracy_per_step[-1]:.4f} SynOps/MAC "
            f"{rep.synops_mac_ratio[-1]:.3f} energy SNN/ANN {rep.energy_ratio[-1]:.3f} "
            f"(report {rep.seconds:.1f}s)")
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Command: `{meta['command']}` ({meta['seconds'] / 60:.0f} min); machine: "
             f"{meta['machine']}; date: {meta['date']}.", "",
             "| model | ANN | QCFS L=8 | T | SNN acc | ANN MACs | SNN SynOps | SynOps/MAC | "
             "SNN/ANN energy | (first layer once) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for T, v in r["T"].items():
            lines.append(
                f"| {r['model']} | {100 * r['ann']:.2f} | {100 * r['qcfs']:.2f} | {T} | "
                f"{100 * v['accuracy']:.2f} | {v['ann_macs'] / 1e6:.2f} M | "
                f"{v['synops'] / 1e6:.2f} M | {v['synops_mac_ratio']:.3f} | "
                f"{v['energy_ratio']:.3f} | {v['energy_ratio_first_once']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data/fashion_mnist.npz")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--test-samples", type=int, default=10000)
    p.add_argument("--train-samples", type=int, default=60000)
    p.add_argument("--out", default="benchmarks/results/report_fashion.md")
    p.add_argument("--nets", default="vgg,resnet", help="comma-separated: vgg, resnet")
    p.add_argument("--quick", action="store_true", help="smoke run: 2000 training images, "
                   "1 epoch, 500 test images, written to /tmp/report_fashion_quick.md")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.test_samples, args.out = 1, 500, "/tmp/report_fashion_quick.md"
    torch.set_num_threads(1)
    start = time.perf_counter()
    with np.load(args.data) as d:
        xtr, ytr = d["x_train"], d["y_train"].astype(np.int64)
        xte, yte = d["x_test"], d["y_test"].astype(np.int64)
    scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
    if args.quick:
        args.train_samples = 2000
    keep = np.random.default_rng(SEED + 1).permutation(len(xtr))[:args.train_samples]
    cal = np.random.default_rng(SEED).permutation(len(xtr))[:512]
    xcal = scale(xtr[cal])
    xtr, ytr, xte = scale(xtr[keep]), ytr[keep], scale(xte)
    test = (xte[:args.test_samples], yte[:args.test_samples])
    rows = []
    nets = [n for n in (("vgg", vgg_like), ("resnet", resnet_like)) if n[0] in args.nets]
    for name, make in nets:
        ann = trained(name, make, xtr, ytr, args.epochs)
        rows.append(run_net(name, ann, xcal, test, batch=256))
        meta = {"command": "python benchmarks/report_fashion.py" + "".join(
                    f" {a}" for a in sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "seconds": time.perf_counter() - start,
                "machine": f"2-core shared CPU, no GPU, Python {platform.python_version()}, "
                           f"torch {torch.__version__} (1 thread), onnxruntime 1 thread",
                "epochs": args.epochs, "train_samples": len(xtr), "calib": 512,
                "test_samples": len(test[0])}
        out = Path(args.out)  # rewritten after each net: a partial run keeps what it has
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown(rows, meta))
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                       indent=2, default=str) + "\n")
    log(f"wrote {out} in {meta['seconds']:.0f}s")


if __name__ == "__main__":
    main()
