"""RMPE benchmark on Fashion-MNIST (issue 3): plain vs. RMPE-calibrated SNN conversion.

Trains a small VGG-like net (Conv-BN-ReLU, AvgPool, MLP head) and a small ResNet-like net
(stem, residual blocks with identity and 1x1-conv shortcuts, GlobalAveragePool) in torch,
exports them (``dynamo=False``, dynamic batch) and reports, on the 10,000 test images:

1. ReLU ANN, post-training QCFS (L = 8 and 4) and SNN accuracy at T = 1..64, without RMPE
   (per-step outputs of one T=64 model, cross-checked against a separately converted T=4
   model) and with RMPE (``convert(..., rmpe=True)``, one conversion per T);
2. RMPE accuracy at T=4 (L=8) against the number of calibration samples, with its time;
3. calibration wall time against one SNN forward pass over the same calibration set
   (threads=1, same batch size, medians of repeats).

Calibration data are training images only. Writes ``benchmarks/results/rmpe_fashion.md``
and ``.json`` (``--quick``: a subsampled smoke run, written to ``/tmp/rmpe_fashion_quick.*``).

Usage::

    python benchmarks/rmpe_fashion.py [--quick]
"""

from __future__ import annotations

import argparse
import json
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

from onnx_rmpe.calibration import calibrate
from onnx_rmpe.conversion import build_qcfs, convert, qcfs_to_snn
from onnx_rmpe.data import Dataset
from onnx_rmpe.evaluation import evaluate
from onnx_rmpe.finetune import finetune
from onnx_rmpe.runtime.session import batches, make_session
from onnx_rmpe.torch.classifier import train_classifier
from onnx_rmpe.torch.export import export as export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_nets import resnet_like, vgg_like  # noqa: E402

STEPS = (1, 2, 4, 8, 16, 32, 64)
LEVELS = (8, 4)
CALIB_SIZES = (64, 128, 256, 512, 1024)
CALIB_DEFAULT = 512          # convert()'s default calib_samples
CALIB_BATCH = 128            # convert()'s / calibrate()'s default batch size
THREADS = 1
SEED = 0


# --------------------------------------------------------------------------- networks
# the small nets of this benchmark: the defaults of fashion_nets.vgg_like / resnet_like
NETS = (("VGG-like", vgg_like), ("ResNet-like", resnet_like))


def train(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[nn.Module, float]:
    """Adam 2e-3, one-cycle to 4e-3, batch 128: the shared loop of the demo and tests."""
    start = time.perf_counter()
    train_classifier(net, x, y, epochs=epochs, lr=2e-3, batch=128, seed=SEED, max_lr=4e-3,
                     threads=None)
    return net.eval(), time.perf_counter() - start


def export(net: nn.Module, x: np.ndarray) -> onnx.ModelProto:
    return export_onnx(net, x[:1], opset=None, output_names=["logits"])


# --------------------------------------------------------------------------- helpers
def eval_batch(T: int) -> int:
    return int(min(1000, max(50, 8192 // T)))


def acc(model: onnx.ModelProto, test, T: int = 1) -> float:
    return evaluate(model, test, threads=THREADS, batch_size=eval_batch(T)).accuracy


def per_step(model: onnx.ModelProto, test, T: int) -> list[float]:
    return evaluate(model, test, threads=THREADS, batch_size=eval_batch(T)).accuracy_per_step


def forward_seconds(snn: onnx.ModelProto, x: np.ndarray, batch_size: int) -> float:
    """Wall time of one SNN forward pass over ``x`` (session built beforehand)."""
    session = make_session(snn, threads=THREADS)
    name = session.get_inputs()[0].name
    out = session.get_outputs()[0].name
    session.run([out], {name: x[:2]})  # warm-up
    start = time.perf_counter()
    for sl in batches(len(x), batch_size):
        session.run([out], {name: x[sl]})
    return time.perf_counter() - start


def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


# --------------------------------------------------------------------------- one net
def run_net(name, make, xtr, ytr, xcal, test, cfg) -> dict:
    net, train_s = train(make(), xtr, ytr, cfg["epochs"])
    relu = export(net, xtr)
    r: dict = {"model": name, "train_seconds": train_s, "ann": acc(relu, test)}
    log(name, f"trained in {train_s:.0f}s, ANN {r['ann']:.4f}")
    steps, Tmax = cfg["steps"], max(cfg["steps"])
    r["levels"] = {}
    qcfs8 = None
    for L in LEVELS:
        variants = [("post-training", relu)]
        if cfg["finetune_epochs"]:
            start = time.perf_counter()
            tuned = finetune(relu, (xtr, ytr), levels=L, epochs=cfg["finetune_epochs"],
                             batch_size=128, seed=SEED, progress=False)
            log(name, f"L={L} fine-tuned in {time.perf_counter() - start:.0f}s")
            variants.append(("fine-tuned", tuned.model))
        for vname, source in variants:
            key = f"{L} {vname}"
            # QCFS thresholds from the first 512 calibration images (post-training, as in
            # convert()) or the trained ones (fine-tuned)
            qcfs, thr = build_qcfs(source, Dataset(xcal[:CALIB_DEFAULT]), levels=L,
                                   threads=THREADS)
            if L == 8:
                qcfs8 = qcfs  # the last variant (fine-tuned when run) serves the cost study
            rl: dict = {"qcfs": acc(qcfs, test), "thresholds": thr}
            plain = convert(source, T=Tmax, calib=xcal, levels=L, rmpe=False, threads=THREADS)
            curve = per_step(plain.snn, test, Tmax)
            rl["plain"] = {t: curve[t - 1] for t in steps}
            log(name, f"{key} QCFS {rl['qcfs']:.4f} plain {rl['plain']}")
            if L == 8 and vname == "post-training":
                # causality check: the T=4 step of the T=64 model vs. a T=4 model of its own
                check_T = 4 if 4 in steps else steps[0]
                sep = convert(source, T=check_T, calib=xcal, levels=L, rmpe=False,
                              threads=THREADS)
                rl["plain_check"] = {"T": check_T, "separate": acc(sep.snn, test, check_T),
                                     "from_Tmax_per_step": rl["plain"][check_T]}
            rl["rmpe"], rl["rmpe_calib_seconds"], rl["rmpe_layers"] = {}, {}, {}
            for T in steps:
                res = convert(source, T=T, calib=xcal, levels=L, rmpe=True, threads=THREADS)
                assert res.thresholds == thr, "convert() QCFS differs from build_qcfs()"
                rl["rmpe"][T] = acc(res.snn, test, T)
                rl["rmpe_calib_seconds"][T] = res.calibration.seconds
                rl["rmpe_layers"][T] = [vars(layer) for layer in res.calibration.layers]
                log(name, f"{key} T={T}: plain {rl['plain'][T]:.4f} RMPE {rl['rmpe'][T]:.4f} "
                    f"(calibration {res.calibration.seconds:.1f}s)")
            r["levels"][key] = rl

    # calibration-set size at T=4, L=8 (QCFS fixed: thresholds from 512 images)
    T_c = 4
    snn4 = qcfs_to_snn(qcfs8, T=T_c)
    r["calib_curve"] = {"T": T_c, "plain": acc(snn4, test, T_c), "points": {}}
    for n in cfg["calib_sizes"]:
        start = time.perf_counter()
        cal = calibrate(snn4, qcfs8, xcal, samples=n, threads=THREADS)
        wall = time.perf_counter() - start
        r["calib_curve"]["points"][n] = {"accuracy": acc(cal.snn, test, T_c),
                                         "seconds": cal.seconds, "wall": wall}
        log(name, f"calib n={n}: {r['calib_curve']['points'][n]}")

    # cost: calibration vs. one SNN forward pass over the same 512 images
    r["cost"] = {}
    xc = xcal[:CALIB_DEFAULT]
    for T in cfg["cost_T"]:
        snn = qcfs_to_snn(qcfs8, T=T)
        cal_s, cal_wall, fwd = [], [], []
        for _ in range(cfg["repeats"]):
            start = time.perf_counter()
            cal = calibrate(snn, qcfs8, xc, batch_size=CALIB_BATCH, threads=THREADS)
            cal_wall.append(time.perf_counter() - start)
            cal_s.append(cal.seconds)
            fwd.append(forward_seconds(snn, xc, CALIB_BATCH))
        c = {"samples": len(xc), "batch_size": CALIB_BATCH, "calib_seconds": cal_s,
             "calib_wall": cal_wall, "forward_seconds": fwd,
             "calib_median": float(np.median(cal_s)), "wall_median": float(np.median(cal_wall)),
             "forward_median": float(np.median(fwd))}
        c["ratio"] = c["calib_median"] / c["forward_median"]
        c["ratio_wall"] = c["wall_median"] / c["forward_median"]
        r["cost"][T] = c
        log(name, f"cost T={T}: calib {c['calib_median']:.2f}s forward "
            f"{c['forward_median']:.2f}s ratio {c['ratio']:.2f}")
    return r


# --------------------------------------------------------------------------- report
def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def verdict(results: list[dict], steps) -> list[str]:
    lines = []
    T4 = 4 if 4 in steps else None
    for r in results:
        for L, rl in r["levels"].items():
            tag = f"{r['model']} L={L}"
            if T4 is not None:
                for ref_name, ref in (("QCFS ANN", rl["qcfs"]), ("ReLU ANN", r["ann"])):
                    lp, lr = ref - rl["plain"][T4], ref - rl["rmpe"][T4]
                    ok = lr <= lp / 2 + 1e-12
                    miss = "" if ok else f"; missed by {100 * (lr - lp / 2):.2f} points"
                    lines.append(f"- {tag}, T=4, loss vs {ref_name}: plain {100 * lp:.2f}, "
                                 f"RMPE {100 * lr:.2f} points (target <= {100 * lp / 2:.2f}): "
                                 f"{'**met**' if ok else '**missed**'}{miss}")
            worse = {T: rl["plain"][T] - rl["rmpe"][T] for T in steps
                     if rl["rmpe"][T] < rl["plain"][T]}
            if worse:
                lines.append(f"- {tag}: RMPE worse than plain at T = " + ", ".join(
                    f"{T} (by {100 * d:.2f} points)" for T, d in worse.items())
                    + ": target **missed**")
            else:
                lines.append(f"- {tag}: RMPE never worse than plain at any T: **met**")
    return lines


def report(results, cfg, meta) -> str:
    steps = cfg["steps"]
    L_ = [
        "# RMPE calibration on Fashion-MNIST (issue 3)", "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; total wall time {meta['seconds'] / 60:.1f} min",
        f"- machine: {meta['machine']}",
        f"- data: Fashion-MNIST scaled to [0, 1], NCHW. Training: {cfg['train_samples']} "
        f"training images (a seeded random subset of the 60000), {cfg['epochs']} epochs Adam "
        "(OneCycle, max lr 4e-3, batch 128), seed 0. Calibration: the first calibration images "
        f"of another seeded permutation of the 60000 training images ({cfg['calib_pool']} "
        f"available). Test: {cfg['test_samples']} test images for every accuracy below (%).",
        "- QCFS, two variants per L (8 and 4, phi = 0.5): **post-training** (thresholds = "
        "99.9th percentile of the positive pre-activations on the first 512 calibration "
        "images) and **fine-tuned** (stage 1: `onnx_rmpe.finetune.finetune` on the training "
        f"images for {cfg['finetune_epochs']} epoch(s), lr 1e-3, batch 128, thresholds "
        "trained). The calibration-size curve and the cost study use the fine-tuned L=8 net.",
        f"- SNN plain: `convert(relu, T={max(steps)}, rmpe=False)`, accuracy after each step t "
        "from its per-step output. SNN RMPE: `convert(relu, T=T, calib=x_cal, levels=L, "
        "rmpe=True)` (default calib_samples=512, batch 128, per-neuron v_init, 1 sweep), one "
        "conversion per T, accuracy of its final (T-step) output. threads=1 everywhere.",
        "- VGG-like: Conv-BN-ReLU 8, AvgPool, 16, 16, AvgPool, 32, AvgPool, FC 64 + ReLU, FC 10 "
        "(5 spiking layers). ResNet-like: stem Conv-BN-ReLU 8 + AvgPool, residual blocks 8 "
        "(identity shortcut), 16/2 and 32/2 (1x1-conv + BN shortcuts), GlobalAveragePool, "
        "FC 10 (7 spiking layers).", ""]
    for r in results:
        rc = r["levels"]["8 post-training"].get("plain_check")
        if rc:
            same = "equal" if rc["separate"] == rc["from_Tmax_per_step"] else "DIFFERENT"
            L_.append(f"- {r['model']}: check of the per-step shortcut: step {rc['T']} of the "
                      f"T={max(steps)} plain SNN {pct(rc['from_Tmax_per_step'])} %, separately "
                      f"converted T={rc['T']} SNN {pct(rc['separate'])} %: {same}.")
    L_ += ["", "## Accuracy vs. T (test, %)", ""]
    head = "| model | L | ReLU ANN | QCFS | SNN | " + " | ".join(f"T={t}" for t in steps) + " |"
    L_ += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for L, rl in r["levels"].items():
            for kind in ("plain", "rmpe"):
                L_.append(f"| {r['model']} | {L} | {pct(r['ann'])} | {pct(rl['qcfs'])} | "
                          f"{'plain' if kind == 'plain' else 'RMPE'} | "
                          + " | ".join(pct(rl[kind][t]) for t in steps) + " |")
    L_ += ["", "RMPE calibration time per conversion (s, `CalibrationResult.seconds`, 512 "
           "samples, machine shared):", ""]
    head = "| model | L | " + " | ".join(f"T={t}" for t in steps) + " |"
    L_ += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for L, rl in r["levels"].items():
            L_.append(f"| {r['model']} | {L} | " + " | ".join(
                f"{rl['rmpe_calib_seconds'][t]:.1f}" for t in steps) + " |")
    L_ += ["", "## Calibration-set size (T=4, L=8, fine-tuned)", "",
           "QCFS fixed; `calibrate(qcfs_to_snn(qcfs, T=4), qcfs, "
           "x_cal, samples=n)`; time = `CalibrationResult.seconds` (wall around `calibrate()` "
           "in brackets).", ""]
    sizes = cfg["calib_sizes"]
    head = "| model | plain T=4 | " + " | ".join(f"n={n}" for n in sizes) + " |"
    L_ += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        cc = r["calib_curve"]
        L_.append(f"| {r['model']} accuracy | {pct(cc['plain'])} | " + " | ".join(
            pct(cc["points"][n]["accuracy"]) for n in sizes) + " |")
        L_.append(f"| {r['model']} seconds | - | " + " | ".join(
            f"{cc['points'][n]['seconds']:.1f} ({cc['points'][n]['wall']:.1f})" for n in sizes)
            + " |")
    L_ += ["", "## Cost: calibration vs. one SNN forward pass (L=8)", "",
           f"Same {CALIB_DEFAULT} calibration images, batch {CALIB_BATCH}, threads=1; medians "
           f"of {cfg['repeats']} repeats. Forward = `session.run` over all batches with the "
           "session built and warmed up beforehand (calibration includes building its "
           "sessions). Ratio = calibration / forward.", "",
           "| model | T | calib (CalibrationResult.seconds) | calib (wall around calibrate) | "
           "SNN forward | ratio | ratio (wall) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for T, c in r["cost"].items():
            L_.append(f"| {r['model']} | {T} | {c['calib_median']:.2f} | {c['wall_median']:.2f} "
                      f"| {c['forward_median']:.2f} | {c['ratio']:.2f} | {c['ratio_wall']:.2f} |")
    L_ += ["", "## Verdict", "",
           "Targets: RMPE at T=4 loses no more than half of what plain conversion loses "
           "(against the QCFS ANN and against the ReLU ANN); RMPE never worse than plain at "
           "any T; calibration <= about 3x one SNN pass.", ""]
    L_ += verdict(results, steps)
    for r in results:
        for T, c in r["cost"].items():
            ok = c["ratio"] <= 3.0
            L_.append(f"- {r['model']} cost T={T}: ratio {c['ratio']:.2f} "
                      f"({c['ratio_wall']:.2f} wall): {'**met**' if ok else '**missed**'}")
    L_.append("")
    return "\n".join(L_)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="subsampled smoke run (~2 min)")
    p.add_argument("--data", default="/work/shared/data/fashion_mnist.npz")
    p.add_argument("--out", default=None, help="report path (default benchmarks/results/"
                                               "rmpe_fashion.md, with --quick /tmp/"
                                               "rmpe_fashion_quick.md; .json beside it)")
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.quick:
        cfg = dict(train_samples=2000, epochs=2, test_samples=1000, steps=(1, 2, 4, 8),
                   calib_sizes=(64, 256), cost_T=(4,), repeats=1, finetune_epochs=1)
    else:
        cfg = dict(train_samples=10000, epochs=2, test_samples=10000, steps=STEPS,
                   calib_sizes=CALIB_SIZES, cost_T=(4, 8), repeats=3, finetune_epochs=2)
    out = Path(args.out or ("/tmp/rmpe_fashion_quick.md" if args.quick
                            else "benchmarks/results/rmpe_fashion.md"))
    start = time.perf_counter()
    with np.load(args.data) as d:
        xtr_all, ytr_all = d["x_train"], d["y_train"].astype(np.int64)
        xte, yte = d["x_test"], d["y_test"].astype(np.int64)
    scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
    rng = np.random.default_rng(SEED)
    tr = rng.permutation(len(xtr_all))[:cfg["train_samples"]]
    cal = rng.permutation(len(xtr_all))[:max(CALIB_SIZES)]
    xtr, ytr = scale(xtr_all[tr]), ytr_all[tr]
    xcal = scale(xtr_all[cal])
    n_test = cfg["test_samples"]
    test = (scale(xte[:n_test]), yte[:n_test])
    cfg["calib_pool"] = len(xcal)
    results = []
    for name, make in NETS:
        results.append(run_net(name, make, xtr, ytr, xcal, test, cfg))
    seconds = time.perf_counter() - start
    load = os.getloadavg()
    meta = {
        "command": "python benchmarks/rmpe_fashion.py" + (" --quick" if args.quick else ""),
        "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
        "seconds": seconds,
        "machine": f"2-core shared CPU ({platform.processor() or platform.machine()}), no GPU; "
                   f"Python {platform.python_version()}, torch {torch.__version__} (2 threads "
                   f"for training), onnx {onnx.__version__}, onnxruntime {ort.__version__} "
                   f"(threads=1 for all runs). Other jobs (tests, benchmarks) ran on the machine "
                   f"at the same time: load average {load[0]:.1f} / {load[1]:.1f} / "
                   f"{load[2]:.1f} (1/5/15 min) at the end, so all seconds are inflated and "
                   "noisy",
    }
    text = report(results, cfg, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    payload = {"meta": meta, "config": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in cfg.items()}, "results": results}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float))
    print(text)
    log(f"done in {seconds / 60:.1f} min -> {out}")


if __name__ == "__main__":
    sys.exit(main())
