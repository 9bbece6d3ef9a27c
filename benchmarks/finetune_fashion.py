"""QCFS fine-tuning on Fashion-MNIST: ReLU ANN -> QCFS (post-training, fine-tuned) -> SNN.

Trains a small VGG-like net (BatchNorm, AvgPool) and a small ResNet-like net (residual
Add, GlobalAveragePool) in torch, exports them (``dynamo=False``), fine-tunes their QCFS
versions with :func:`onnx_rmpe.finetune.finetune` at each L, converts them with
:func:`onnx_rmpe.convert.convert` (``rmpe=False``) and reports test accuracy of the ReLU
ANN, the post-training and fine-tuned QCFS ANN, and the SNN at T = 1..32 (the per-step
cumulative outputs of one T=32 run equal the T=t runs: without RMPE the SNN is causal).

Usage::

    python benchmarks/finetune_fashion.py [--data PATH] [--train-samples 8000]
        [--out benchmarks/results/finetune_fashion.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from onnx_rmpe.convert import build_qcfs, convert
from onnx_rmpe.data import Dataset
from onnx_rmpe.finetune import finetune

STEPS = (1, 2, 4, 8, 16, 32)


sys.path.insert(0, os.path.dirname(__file__))
from rmpe_fashion import Residual, export  # noqa: E402  (the same blocks and export)


def vgg() -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(1, 8), *block(8, 8), nn.AvgPool2d(2), *block(8, 16),
                         *block(16, 16), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


def resnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         Residual(8, 8, 1), Residual(8, 16, 2), Residual(16, 32, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def train_ann(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    gen, times = torch.Generator().manual_seed(seed), []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[idx]), Y[idx]).backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return net.eval(), times


def predict(model: onnx.ModelProto, x: np.ndarray, output: str, batch: int = 250) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    parts = [sess.run([output], {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts, axis=1 if output.endswith("_per_step") else 0)


def acc(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(-1) == y).mean())


def run_model(name, make, data, args, rows) -> None:
    (xtr, ytr), (xval, yval), (xte, yte) = data
    net, ann_times = train_ann(make(), xtr, ytr, args.ann_epochs)
    relu = export(net, xtr)
    ann_acc = acc(predict(relu, xte, "logits"), yte)
    for L in args.levels:
        ptq, _ = build_qcfs(relu, Dataset(xtr[:1024]), levels=L)
        ptq_acc = acc(predict(ptq, xte, "logits"), yte)
        ft = finetune(relu, (xtr, ytr), levels=L, epochs=args.ft_epochs, lr=args.lr,
                      batch_size=64, val=(xval, yval), progress=False)
        ft_acc = acc(predict(ft.model, xte, "logits"), yte)
        snn = convert(ft.model, T=max(STEPS), rmpe=False).snn
        curve = predict(snn, xte, "logits_per_step")
        snn_acc = {t: acc(curve[t - 1], yte) for t in STEPS}
        rows.append(dict(model=name, L=L, ann=ann_acc, ptq=ptq_acc, ft=ft_acc, snn=snn_acc,
                         ann_epoch_s=float(np.mean(ann_times)),
                         ft_epoch_s=float(np.mean([h.seconds for h in ft.history])),
                         val=[h.val_accuracy for h in ft.history]))
        print(name, rows[-1], flush=True)


def report(rows, args, seconds: float) -> str:
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    head = "| model | L | ReLU ANN | QCFS post-training | QCFS fine-tuned | " + " | ".join(
        f"SNN T={t}" for t in STEPS) + " | s/epoch ANN | s/epoch fine-tune |"
    lines = [
        "# QCFS fine-tuning on Fashion-MNIST", "",
        "- command: `python benchmarks/finetune_fashion.py` (defaults: "
        f"--train-samples {args.train_samples} --val-samples {args.val_samples} --test-samples "
        f"{args.test_samples} --ann-epochs {args.ann_epochs} --ft-epochs {args.ft_epochs} "
        f"--levels {' '.join(map(str, args.levels))})",
        f"- machine: 2-core CPU ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, onnxruntime {ort.__version__}, {torch.get_num_threads()} torch "
        f"threads; date: {date}; total wall time {seconds / 60:.1f} min (the machine was "
        f"shared with other jobs: load average {os.getloadavg()[0]:.1f} at the end, so the "
        "seconds are upper bounds)",
        f"- data: Fashion-MNIST, {args.train_samples} training images (a seeded random subset "
        f"of the 60000), {args.val_samples} other training images as the held-out set for the "
        f"per-epoch accuracy, the first {args.test_samples} test images for every number "
        "below (test accuracy, %).",
        f"- ReLU ANN: {args.ann_epochs} epochs Adam (lr 2e-3, batch 128). Fine-tuning: "
        f"`finetune(levels=L, epochs={args.ft_epochs}, lr={args.lr}, batch_size=64)` starting "
        "from the post-training QCFS (lam = 99.9th percentile). SNN: `convert(..., rmpe=False)`,"
        " per-step outputs of one T=32 run.",
        "- VGG-like: 4 conv 3x3 (8-8-16-16) + BN + ReLU, 2 AvgPool, FC 64. ResNet-like: stem 8"
        " + 3 residual blocks (8, 16/2, 32/2; 1x1 projection shortcuts), GlobalAveragePool.",
        "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['L']} | {100 * r['ann']:.2f} | {100 * r['ptq']:.2f} | "
                     f"{100 * r['ft']:.2f} | "
                     + " | ".join(f"{100 * r['snn'][t]:.2f}" for t in STEPS)
                     + f" | {r['ann_epoch_s']:.1f} | {r['ft_epoch_s']:.1f} |")
    lines += ["", "Held-out accuracy after each fine-tuning epoch: " + "; ".join(
        f"{r['model']} L={r['L']}: " + ", ".join(f"{100 * v:.1f}" for v in r["val"])
        for r in rows), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data/fashion_mnist.npz")
    p.add_argument("--train-samples", type=int, default=8000)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--ann-epochs", type=int, default=3)
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--levels", type=int, nargs="+", default=[4, 8])
    p.add_argument("--out", default="benchmarks/results/finetune_fashion.md")
    args = p.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    with np.load(args.data) as d:
        xtr, ytr = d["x_train"], d["y_train"].astype(np.int64)
        xte, yte = d["x_test"][:args.test_samples], d["y_test"][:args.test_samples].astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(xtr))
    n = args.train_samples
    tr, va = perm[:n], perm[n:n + args.val_samples]
    scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
    data = ((scale(xtr[tr]), ytr[tr]), (scale(xtr[va]), ytr[va]), (scale(xte), yte))
    rows: list[dict] = []
    for name, make in (("VGG-like", vgg), ("ResNet-like", resnet)):
        run_model(name, make, data, args, rows)
    text = report(rows, args, time.perf_counter() - start)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
