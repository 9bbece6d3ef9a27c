"""The default ``convert`` (per-channel / per-layer chosen automatically) at T = 1 to 8.

Issue 11's final tables on the 12-epoch Fashion-MNIST nets of ``fashion_nets.py``, protocol
of ``accuracy_fashion.py`` (512 calibration images of the seed-0 permutation of the
training set, onnxruntime one thread). Per net, accuracy on the first ``--test`` test
images of: the ReLU ANN; the QCFS ANN (L = 8, 99.9th percentile; per layer and per
channel); plain conversion (``thresholds="percentile", rmpe=False``, per layer and per
channel; one T = max model, whose per-step outputs give every smaller T: it is causal);
and the default ``convert`` at each T, with the choice it made and both output errors. The
SNN that ``auto`` built and dropped is evaluated too (caught by wrapping the choice, no
extra conversion), so each default row also has the test accuracy of both candidates and
whether the choice kept the better one.
Appends one JSON line per row to ``--out`` as it finishes (a row per net and kind), each
labelled with ``--run`` (default: the start time). The reference rows of every net come
first, then the default rows T by T in the given order, each T on every net, so that a run
cut short misses the last T of the last net, not a whole net.

Usage::

    python benchmarks/accuracy_auto.py vgg_bn_avg,resnet 1,2,4,8 [--test 10000] [--run LABEL]
    python benchmarks/accuracy_auto.py --report [--run LABEL]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import onnx_rmpe
import onnx_rmpe.conversion as conversion
from onnx_rmpe.conversion import build_qcfs
from onnx_rmpe.data import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from accuracy_fashion import CALIB, SEED, correct  # noqa: E402
from fashion_nets import cached, load_fashion  # noqa: E402

RUN: str | None = None  # set by main: the ``run`` label of every row written


def emit(out: Path, row: dict) -> None:
    row = {**row, "run": RUN, "load": os.getloadavg()[0],
           "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    line = json.dumps(row)
    print(line, flush=True)
    with out.open("a") as f:
        f.write(line + "\n")


def reference_rows(name: str, relu, meta, xcal, xte, yte, plain_T: int, out: Path) -> None:
    n = len(xte)
    emit(out, {"net": name, "row": "relu", "test": n,
               "acc": float(correct(relu, xte, yte).mean()), "trained": meta["test_accuracy"]})
    for per_channel in (False, True):
        scope = "channel" if per_channel else "layer"
        qcfs, _ = build_qcfs(relu, Dataset(xcal), levels=8, threads=1, per_channel=per_channel)
        emit(out, {"net": name, "row": f"qcfs per {scope}", "test": n,
                   "acc": float(correct(qcfs, xte, yte).mean())})
        plain = onnx_rmpe.convert(relu, T=plain_T, calib=xcal, thresholds="percentile",
                                  rmpe=False, threads=1, per_channel=per_channel)
        hits = correct(plain.snn, xte, yte)
        emit(out, {"net": name, "row": f"plain per {scope}", "test": n,
                   "per_step": hits.mean(1).tolist()})


def default_row(name: str, relu, xcal, xte, yte, T: int, out: Path) -> None:
    candidates: dict = {}  # scope -> SNN of each conversion the choice ran
    real = conversion.choose_per_channel

    def spy(build, *args, scope_of, **kwargs):
        def recording(per_channel):
            built = build(per_channel)
            candidates[scope_of(built)] = built.snn
            return built
        return real(recording, *args, scope_of=scope_of, **kwargs)

    conversion.choose_per_channel = spy
    try:
        start = time.perf_counter()
        res = onnx_rmpe.convert(relu, T=T, calib=xcal, threads=1)
        seconds = time.perf_counter() - start
    finally:
        conversion.choose_per_channel = real
    hits = correct(res.snn, xte, yte)
    chosen = res.per_channel.chosen
    both = {scope: (hits if scope == chosen else correct(snn, xte, yte))[-1].mean().item()
            for scope, snn in candidates.items()}
    emit(out, {"net": name, "row": "default", "T": T, "test": len(xte),
               "acc": float(hits[-1].mean()), "acc_first_2000": float(hits[-1, :2000].mean()),
               "per_step": hits.mean(1).tolist(), "choice": res.per_channel.as_dict(),
               "candidates_acc": both,
               "kept_better": (both[chosen] >= max(both.values())) if len(both) == 2 else None,
               "refine": [(r.error_start, r.error_end, r.passes, r.seconds)
                          for r in res.threshold_refine],
               "rmpe_accepted": None if res.calibration is None else res.calibration.accepted,
               "seconds": seconds})


TARGETS = {"vgg_bn_avg": {4: 1.0, 8: 0.5}, "resnet": {4: 3.0, 8: 1.0}}


def report(path: Path, run: str | None = None) -> str:
    """Markdown tables of a results file, one per run label (only ``run`` when given; the
    last row of each kind within a run wins)."""
    runs: dict = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if run is None or r.get("run") == run:
            runs.setdefault(r.get("run"), {}).setdefault(r["net"], {})[(r["row"], r.get("T"))] = r
    return "\n".join(f"Run {label}:\n\n{_table(rows)}" for label, rows in runs.items())


def _table(rows: dict) -> str:
    out = ["| net | test images | ReLU ANN | QCFS ANN per layer / channel | T | plain per "
           "layer / channel | default | chosen | output error per channel / layer | loss vs "
           "ReLU | default - best plain | test acc. per channel / layer | choice kept the "
           "better | convert s |", "|" + "---|" * 14]
    for net, r in rows.items():
        if ("relu", None) not in r:
            continue
        relu = 100 * r[("relu", None)]["acc"]
        q = [100 * r[(f"qcfs per {s}", None)]["acc"] for s in ("layer", "channel")
             if (f"qcfs per {s}", None) in r]
        plain = [r[(f"plain per {s}", None)]["per_step"] for s in ("layer", "channel")
                 if (f"plain per {s}", None) in r]
        for (_kind, T), d in sorted(((k, v) for k, v in r.items() if k[0] == "default"),
                                   key=lambda kv: kv[0][1]):
            p = [100 * curve[T - 1] for curve in plain if len(curve) >= T]
            e = d["choice"]["output_error"]
            errs = f"{e['channel']:.3f} / {e['layer']:.3f}" if e else "-"
            loss = relu - 100 * d["acc"]
            goal = TARGETS.get(net, {}).get(T)
            verdict = "" if goal is None else f" (<= {goal}: {'met' if loss <= goal else 'missed'})"
            out.append(f"| {net} | {d['test']} | {relu:.2f} | "
                       f"{' / '.join(f'{v:.2f}' for v in q)} | {T} | "
                       f"{' / '.join(f'{v:.2f}' for v in p)} | **{100 * d['acc']:.2f}** | "
                       f"{d['choice']['chosen']} | {errs} | {loss:.2f}{verdict} | "
                       f"{100 * d['acc'] - max(p, default=float('nan')):+.2f} | "
                       f"{_candidates(d)} | "
                       f"{d['seconds']:.0f} |")
    return "\n".join(out) + "\n"


def _candidates(d: dict) -> str:
    """``per channel / per layer (kept better?)`` test accuracy of auto's two SNNs."""
    both = d.get("candidates_acc") or {}
    if len(both) < 2:
        return "- | -"
    better = {True: "yes", False: "no"}[d["kept_better"]]
    if both["channel"] == both["layer"]:
        better += " (equal)"
    return f"{100 * both['channel']:.2f} / {100 * both['layer']:.2f} | {better}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("nets", nargs="?", help="comma-separated net names of fashion_nets.py")
    p.add_argument("steps", nargs="?", help="comma-separated T of the default rows")
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--no-reference", action="store_true", help="only the default rows")
    p.add_argument("--plain-T", type=int, default=8, help="T of the plain models")
    p.add_argument("--out", default="benchmarks/results/accuracy_auto.jsonl")
    p.add_argument("--run", default=None, help="label of the rows written (default: the "
                   "start time); with --report: only this run")
    p.add_argument("--report", action="store_true", help="print the tables of --out, exit")
    args = p.parse_args()
    if args.report:
        print(report(Path(args.out), args.run), end="")
        return
    if not (args.nets and args.steps):
        p.error("nets and steps are required (except with --report)")
    global RUN
    RUN = args.run or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    steps = [int(t) for t in args.steps.split(",")]
    xtr, _, xte, yte = load_fashion()
    xcal = xtr[np.random.default_rng(SEED).permutation(len(xtr))[:CALIB]]
    xte, yte = xte[:args.test], yte[:args.test]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nets = {name: cached(name) for name in args.nets.split(",")}
    if not args.no_reference:
        for name, (relu, meta) in nets.items():
            reference_rows(name, relu, meta, xcal, xte, yte, args.plain_T, out)
    for T in steps:
        for name, (relu, _) in nets.items():
            default_row(name, relu, xcal, xte, yte, T, out)


if __name__ == "__main__":
    main()
