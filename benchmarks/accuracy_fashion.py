"""Post-training accuracy at T = 1 to 16 on fully trained Fashion-MNIST nets (issue 11).

For each cached ground-truth net of ``fashion_nets.py`` (train them first), on the test
images (all 10,000 unless ``--quick``), accuracy (%) of:

- ReLU ANN; QCFS ANN (L = 8, thresholds = 99.9th percentile);
- **plain**: ``convert(rmpe=False, thresholds="percentile")``: the per-step outputs of one
  T = 16 model give T = 1, 2, 4, 8, 16 (plain conversion is causal);
- **RMPE** (the paper's method, the old default): percentile thresholds + RMPE;
- **search**: per-layer thresholds chosen for T (``onnx_rmpe.thresholds``), no RMPE;
- **search + RMPE** (the new default ``convert``);
- techniques: search + RMPE per channel (``rmpe_granularity="channel"``); QCFS levels tied
  to T (``levels=T``), with search + RMPE.

One conversion per T for every row but plain; calibration: the first 512 images of a
seeded permutation of the training set (``convert``'s default ``calib_samples``).
Anytime output: the per-step accuracy of the default models calibrated for T = 4 and 8
against plain. Results go to ``benchmarks/results/accuracy_fashion.md`` (+ ``.json``) as
rows finish (``--quick``: 1000 test images, T = 1, 2, 4, to ``/tmp``).

Usage::

    python benchmarks/accuracy_fashion.py [--nets vgg_bn_avg,resnet] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_rmpe.convert import build_qcfs, convert
from onnx_rmpe.data import Dataset
from onnx_rmpe.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_nets import DATA, NETS, cached, load_fashion  # noqa: E402

STEPS = (1, 2, 4, 8, 16)
CALIB = 512
THREADS = 1
SEED = 0
#: row -> convert() options (one conversion per T)
ROWS = {
    "RMPE (percentile)": dict(thresholds="percentile", rmpe=True),
    "search": dict(thresholds="search", rmpe=False),
    "search + RMPE (default)": dict(thresholds="search", rmpe=True),
    "search + RMPE per channel": dict(thresholds="search", rmpe=True,
                                      rmpe_granularity="channel"),
    "search + RMPE, L = T": dict(thresholds="search", rmpe=True, levels="T"),
}
ANYTIME = "search + RMPE (default)"


def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def snn_eval(model: onnx.ModelProto, test, T: int):
    return evaluate(model, test, threads=THREADS, batch_size=int(max(50, 4000 // T)))


def run_net(name: str, xcal: np.ndarray, test, steps, rows, record: dict, save) -> None:
    found = cached(name)
    if found is None:
        log(f"{name}: not cached; run benchmarks/fashion_nets.py first")
        return
    relu, meta = found
    r = record.setdefault(name, {"description": meta["description"],
                                 "train": {k: meta[k] for k in ("epochs", "train_seconds",
                                                                "test_accuracy")}})
    r["ann"] = evaluate(relu, test, threads=THREADS).accuracy
    qcfs, _ = build_qcfs(relu, Dataset(xcal), levels=8, threads=THREADS)
    r["qcfs"] = evaluate(qcfs, test, threads=THREADS).accuracy
    log(name, f"ANN {r['ann']:.4f} QCFS {r['qcfs']:.4f}")
    plain = convert(relu, T=max(steps), calib=xcal, thresholds="percentile", rmpe=False,
                    threads=THREADS)
    curve = snn_eval(plain.snn, test, max(steps)).accuracy_per_step
    r["rows"] = {"plain": {T: curve[T - 1] for T in steps}}
    r["anytime"] = {"plain": curve}
    log(name, "plain", r["rows"]["plain"])
    save()
    for row in rows:
        opts = dict(ROWS[row])
        r["rows"][row], r.setdefault("seconds", {})[row] = {}, {}
        for T in steps:
            kw = {**opts, "levels": T} if opts.get("levels") == "T" else opts
            start = time.perf_counter()
            res = convert(relu, T=T, calib=xcal, threads=THREADS, **kw)
            r["seconds"][row][T] = time.perf_counter() - start
            ev = snn_eval(res.snn, test, T)
            r["rows"][row][T] = ev.accuracy
            if row == ANYTIME and T in (4, 8):
                r["anytime"][f"default T={T}"] = ev.accuracy_per_step
            if res.calibration is not None and not res.calibration.accepted:
                r.setdefault("rejected", []).append(f"{row} T={T}")
            log(name, row, f"T={T}: {ev.accuracy:.4f} ({r['seconds'][row][T]:.0f}s)")
            save()


def report(record: dict, meta: dict, steps) -> str:
    out = ["# Post-training accuracy on fully trained Fashion-MNIST nets (issue 11)", "",
           f"- command: `{meta['command']}`", f"- date: {meta['date']}",
           f"- machine: {meta['machine']}",
           f"- test images: {meta['test']}; calibration: {CALIB} training images; L = 8 "
           "unless stated; threads = 1. Accuracy (%) of the SNN's final output.", ""]
    head = "| net (ReLU ANN, QCFS ANN) | row | " + " | ".join(f"T={T}" for T in steps) + " |"
    out += [head, "|" + "---|" * (len(steps) + 2)]
    for name, r in record.items():
        if "rows" not in r:
            continue
        label = f"{name} ({pct(r['ann'])}, {pct(r['qcfs'])})"
        for row, accs in r["rows"].items():
            out.append(f"| {label} | {row} | " + " | ".join(pct(accs.get(T)) for T in steps)
                       + " |")
    out += ["", "Loss vs. the ReLU ANN (points) of the default against the targets "
            "(VGG-like: <= 1.0 at T=4, <= 0.5 at T=8; ResNet-like: <= 3.0 and <= 1.0), "
            "and the default minus plain at every T (must be >= 0):", ""]
    targets = {"vgg_bn_avg": {4: 1.0, 8: 0.5}, "resnet": {4: 3.0, 8: 1.0}}
    for name, r in record.items():
        default = r.get("rows", {}).get(ANYTIME)
        if not default:
            continue
        parts = []
        for T, limit in targets.get(name, {}).items():
            if T in default:
                loss = 100 * (r["ann"] - default[T])
                parts.append(f"T={T} loss {loss:.2f} (target <= {limit}: "
                             f"{'met' if loss <= limit else 'missed'})")
        diff = ", ".join(f"T={T} {100 * (default[T] - r['rows']['plain'][T]):+.2f}"
                         for T in steps if T in default)
        out.append(f"- {name}: " + "; ".join(parts + [f"vs plain: {diff}"]))
    out += ["", "Anytime output: accuracy (%) after step t of the default model calibrated "
            "for T, against plain conversion (same thresholds at every step).", ""]
    for name, r in record.items():
        for key, curve in r.get("anytime", {}).items():
            if key == "plain":
                continue
            n = len(curve)
            out.append(f"- {name} {key}: " + ", ".join(
                f"t={t + 1} {pct(curve[t])} (plain {pct(r['anytime']['plain'][t])})"
                for t in range(n)))
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="vgg_bn_avg,resnet,vgg_bn_max,mobilenet")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows of ROWS")
    p.add_argument("--quick", action="store_true", help="1000 test images, T = 1, 2, 4")
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    steps = (1, 2, 4) if args.quick else STEPS
    n_test = 1000 if args.quick else 10000
    out = Path(args.out or ("/tmp/accuracy_fashion_quick.md" if args.quick
                            else "benchmarks/results/accuracy_fashion.md"))
    xtr, _, xte, yte = load_fashion(args.data)
    xcal = xtr[np.random.default_rng(SEED).permutation(len(xtr))[:CALIB]]
    test = (xte[:n_test], yte[:n_test])
    nets = [n for n in args.nets.split(",") if n in NETS]
    rows = [r for r in args.rows.split(",") if r in ROWS]
    record: dict = {}
    command = "python benchmarks/accuracy_fashion.py " + " ".join(sys.argv[1:])
    meta = {"command": command.strip(), "test": n_test,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"2-core shared CPU ({platform.machine()}), no GPU; onnx "
                       f"{onnx.__version__}, onnxruntime {ort.__version__}"}

    def save() -> None:
        meta["load"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report(record, meta, steps))
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": record},
                                                       indent=1, default=float))

    for name in nets:
        run_net(name, xcal, test, steps, rows, record, save)
    save()
    log(f"done -> {out}")


if __name__ == "__main__":
    sys.exit(main())
