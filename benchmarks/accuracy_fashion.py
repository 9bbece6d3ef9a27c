"""Post-training accuracy at T = 1 to 16 on fully trained Fashion-MNIST nets (issue 11).

For each cached ground-truth net of ``fashion_nets.py`` (train them first), accuracy (%)
of the ReLU ANN, the QCFS ANN (L = 8, 99.9th-percentile thresholds) and:

- **plain**: ``convert(rmpe=False, thresholds="percentile")``; the per-step outputs of one
  T = 16 model give T = 1, 2, 4, 8, 16 (plain conversion is causal);
- **default**: ``convert()`` = per-layer thresholds searched for T, refined by the output
  error (before and after RMPE, T <= 8; :mod:`onnx_rmpe.refine`) + RMPE, one conversion
  per T;

on all test images (10,000) at T = 1, 2, 4, 8, 16; and, on the first ``--subset`` test
images (the CPU allows no more) at T = 1, 2, 4, each technique alone:

- **search + RMPE (former default)**: no output refinement;
- **RMPE (percentile)**: the paper's method, the default before the search;
- **search**: thresholds searched for T, no RMPE;
- **search + RMPE per channel** (``rmpe_granularity="channel"``);
- **search + RMPE with L = T**: QCFS levels tied to T.

Calibration: the first 512 images of a seeded permutation of the training set
(``convert``'s default ``calib_samples``). Anytime output: per-step accuracy of the
default models for T = 4 and 8 against plain. Results go to
``benchmarks/results/accuracy_fashion.md`` (+ ``.json``) as rows finish (``--quick``:
1000 test images, T = 1, 2, 4, to ``/tmp``).

Usage::

    python benchmarks/accuracy_fashion.py [--nets vgg_bn_avg,resnet] [--subset 2000] [--quick]
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

from onnx_rmpe.conversion import build_qcfs, convert
from onnx_rmpe.data import Dataset
from onnx_rmpe.modelio import get_metadata
from onnx_rmpe.runtime.session import batches, make_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_nets import DATA, NETS, cached, load_fashion  # noqa: E402

STEPS = (1, 2, 4, 8, 16)
TECH_STEPS = (1, 2, 4)
CALIB = 512
THREADS = 1
SEED = 0
DEFAULT = "refine + RMPE (default)"
#: technique rows (first ``--subset`` test images) -> convert() options
ROWS = {
    "search + RMPE (former default)": dict(thresholds="search", rmpe=True),
    "RMPE (percentile)": dict(thresholds="percentile", rmpe=True),
    "search": dict(thresholds="search", rmpe=False),
    "search + RMPE per channel": dict(thresholds="search", rmpe=True,
                                      rmpe_granularity="channel"),
    "search + RMPE with L = T": dict(thresholds="search", rmpe=True, levels="T"),
}


def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def correct(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Top-1 hits ``[steps, N]`` (an ANN has one step; an SNN one per time step)."""
    session = make_session(model, threads=THREADS)
    names = [o.name for o in session.get_outputs()]
    out = next((n for n in names if n.endswith("_per_step")), names[0])
    step_batch = 4000 // max(1, int(get_metadata(model).get("onnx_rmpe.T", 1)))
    hits = []
    for sl in batches(len(x), max(50, step_batch)):
        logits = session.run([out], {session.get_inputs()[0].name: x[sl]})[0]
        logits = logits if logits.ndim == 3 else logits[None]
        hits.append(logits.argmax(-1) == y[sl])
    return np.concatenate(hits, axis=1)


def run_net(name: str, xcal: np.ndarray, test, subset: int, steps, tech_steps, rows,
            record: dict, save) -> None:
    found = cached(name)
    if found is None:
        log(f"{name}: not cached; run benchmarks/fashion_nets.py first")
        return
    relu, meta = found
    x, y = test
    r = record.setdefault(name, {"description": meta["description"], "train": {
        k: meta[k] for k in ("epochs", "train_seconds", "test_accuracy")}})
    if "plain" in r.get("full", {}):  # --resume: keep ANN, QCFS and plain, redo the rest
        r["full"] = {"plain": {int(k): v for k, v in r["full"]["plain"].items()}, DEFAULT: {}}
        r["subset"] = {"plain": {int(k): v for k, v in r["subset"]["plain"].items()},
                       DEFAULT: {}}
        r["anytime"] = {"plain": r["anytime"]["plain"]}
        r["seconds"] = {}
        r.pop("thresholds", None), r.pop("rejected", None)
        log(name, "resumed: ANN, QCFS and plain from the earlier run")
    else:
        _reference_rows(r, relu, xcal, test, subset, steps, tech_steps)
        save()
    _technique_rows(r, relu, xcal, test, subset, steps, tech_steps, rows, save)


def _reference_rows(r: dict, relu, xcal, test, subset, steps, tech_steps) -> None:
    x, y = test
    name = r["description"]
    r["ann"] = float(correct(relu, x, y).mean())
    qcfs, _ = build_qcfs(relu, Dataset(xcal), levels=8, threads=THREADS)
    r["qcfs"] = float(correct(qcfs, x, y).mean())
    log(name, f"ANN {r['ann']:.4f} QCFS {r['qcfs']:.4f}")
    plain = convert(relu, T=max(steps), calib=xcal, thresholds="percentile", rmpe=False,
                    threads=THREADS)
    hits = correct(plain.snn, x, y)
    r["full"] = {"plain": {T: float(hits[T - 1].mean()) for T in steps}, DEFAULT: {}}
    r["subset"] = {"plain": {T: float(hits[T - 1, :subset].mean()) for T in tech_steps},
                   DEFAULT: {}}
    r["anytime"] = {"plain": hits.mean(1).tolist()}
    r["seconds"] = {}
    log(name, "plain", r["full"]["plain"])


def _technique_rows(r: dict, relu, xcal, test, subset, steps, tech_steps, rows, save) -> None:
    x, y = test
    name = r["description"]
    for T in steps:
        start = time.perf_counter()
        res = convert(relu, T=T, calib=xcal, threads=THREADS)
        r["seconds"][f"{DEFAULT} T={T}"] = time.perf_counter() - start
        hits = correct(res.snn, x, y)
        r["full"][DEFAULT][T] = float(hits[-1].mean())
        if T in tech_steps:
            r["subset"][DEFAULT][T] = float(hits[-1, :subset].mean())
        if T in (4, 8):
            r["anytime"][f"default T={T}"] = hits.mean(1).tolist()
        r.setdefault("thresholds", {})[T] = [vars(t) for t in res.threshold_search]
        r.setdefault("refine", {})[T] = [vars(t) for t in res.threshold_refine]
        if res.calibration is not None and not res.calibration.accepted:
            r.setdefault("rejected", []).append(f"{DEFAULT} T={T}")
        log(name, DEFAULT, f"T={T}: {r['full'][DEFAULT][T]:.4f} "
            f"(conversion {r['seconds'][f'{DEFAULT} T={T}']:.0f}s)")
        save()
    xs, ys = x[:subset], y[:subset]
    for row in rows:
        r["subset"][row] = {}
        for T in tech_steps:
            opts = dict(ROWS[row])
            if opts.get("levels") == "T":
                opts["levels"] = T
            res = convert(relu, T=T, calib=xcal, threads=THREADS, **opts)
            r["subset"][row][T] = float(correct(res.snn, xs, ys)[-1].mean())
            if res.calibration is not None and not res.calibration.accepted:
                r.setdefault("rejected", []).append(f"{row} T={T}")
            log(name, row, f"T={T}: {r['subset'][row][T]:.4f}")
            save()


def _table(record: dict, key: str, steps) -> list[str]:
    head = "| net (ReLU ANN, QCFS ANN) | row | " + " | ".join(f"T={T}" for T in steps) + " |"
    out = [head, "|" + "---|" * (len(steps) + 2)]
    for name, r in record.items():
        label = f"{name} ({pct(r.get('ann'))}, {pct(r.get('qcfs'))})"
        for row, accs in r.get(key, {}).items():
            out.append(f"| {label} | {row} | " + " | ".join(pct(accs.get(T)) for T in steps)
                       + " |")
    return out


def report(record: dict, meta: dict, steps, tech_steps) -> str:
    out = ["# Post-training accuracy on fully trained Fashion-MNIST nets (issue 11)", "",
           f"- command: `{meta['command']}`", f"- date: {meta['date']}",
           f"- machine: {meta['machine']}; load average {meta.get('load')}",
           f"- calibration: {CALIB} training images; L = 8 unless stated; onnxruntime "
           "threads = 1. Accuracy (%) of the SNN's final output (QCFS/ReLU in brackets).",
           "", f"## All {meta['test']} test images", ""]
    out += _table(record, "full", steps)
    out += ["", f"## Each technique alone (first {meta['subset']} test images)", ""]
    out += _table(record, "subset", tech_steps)
    out += ["", "## Targets", "",
            "Loss of the default vs. the ReLU ANN (points; VGG-like: <= 1.0 at T=4, <= 0.5 "
            "at T=8; ResNet-like: <= 3.0 and <= 1.0) and default minus plain at every T "
            "(must be >= 0), all test images:", ""]
    targets = {"vgg_bn_avg": {4: 1.0, 8: 0.5}, "resnet": {4: 3.0, 8: 1.0}}
    for name, r in record.items():
        default = r.get("full", {}).get(DEFAULT)
        if not default:
            continue
        parts = []
        for T, limit in targets.get(name, {}).items():
            if T in default:
                loss = 100 * (r["ann"] - default[T])
                parts.append(f"T={T} loss {loss:.2f} (target <= {limit}: "
                             f"**{'met' if loss <= limit else 'missed'}**)")
        diff = ", ".join(f"T={T} {100 * (default[T] - r['full']['plain'][T]):+.2f}"
                         for T in steps if T in default)
        out.append(f"- {name}: " + "; ".join(parts + [f"default - plain: {diff}"]))
        if r.get("rejected"):
            out.append(f"  - RMPE rejected by its check: {', '.join(r['rejected'])}")
    out += ["", "## Anytime output", "",
            "Accuracy (%) after step t of the default model calibrated for T, against plain "
            "conversion at step t (all test images).", ""]
    for name, r in record.items():
        for key, curve in r.get("anytime", {}).items():
            if key != "plain":
                out.append(f"- {name} {key}: " + ", ".join(
                    f"t={t + 1} {pct(curve[t])} (plain {pct(r['anytime']['plain'][t])})"
                    for t in range(len(curve))))
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="vgg_bn_avg,resnet,vgg_bn_max,mobilenet")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows of ROWS")
    p.add_argument("--subset", type=int, default=2000, help="test images for the techniques")
    p.add_argument("--quick", action="store_true", help="1000 test images, T = 1, 2, 4")
    p.add_argument("--merge", default=None,
                   help="comma-separated .json results of earlier runs (one net each, run "
                        "side by side): write their joint report to --out and exit")
    p.add_argument("--resume", action="store_true",
                   help="reuse ANN, QCFS and plain rows from the existing --out json")
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    steps = (1, 2, 4) if args.quick else STEPS
    tech_steps = (1, 2) if args.quick else TECH_STEPS
    n_test = 1000 if args.quick else 10000
    subset = min(args.subset, n_test)
    out = Path(args.out or ("/tmp/accuracy_fashion_quick.md" if args.quick
                            else "benchmarks/results/accuracy_fashion.md"))
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge.split(",")]
        meta = {**parts[0]["meta"], "command": " + ".join(p["meta"]["command"] for p in parts)}
        record = {k: v for p in parts for k, v in p["results"].items()}
        for r in record.values():
            for key in ("full", "subset"):
                r[key] = {row: {int(T): a for T, a in accs.items()}
                          for row, accs in r.get(key, {}).items()}
        out.write_text(report(record, meta, steps, tech_steps))
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": record},
                                                       indent=1, default=float))
        return
    xtr, _, xte, yte = load_fashion(args.data)
    xcal = xtr[np.random.default_rng(SEED).permutation(len(xtr))[:CALIB]]
    test = (xte[:n_test], yte[:n_test])
    nets = [n for n in args.nets.split(",") if n in NETS]
    rows = [r for r in args.rows.split(",") if r in ROWS]
    record: dict = {}
    if args.resume and out.with_suffix(".json").exists():
        record = json.loads(out.with_suffix(".json").read_text())["results"]
    command = "python benchmarks/accuracy_fashion.py " + " ".join(sys.argv[1:])
    meta = {"command": command.strip(), "test": n_test, "subset": subset,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"2-core shared CPU ({platform.machine()}), no GPU; onnx "
                       f"{onnx.__version__}, onnxruntime {ort.__version__}"}

    def save() -> None:
        meta["load"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report(record, meta, steps, tech_steps))
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": record},
                                                       indent=1, default=float))

    for name in nets:
        run_net(name, xcal, test, subset, steps, tech_steps, rows, record, save)
    save()
    log(f"done -> {out}")


if __name__ == "__main__":
    sys.exit(main())
