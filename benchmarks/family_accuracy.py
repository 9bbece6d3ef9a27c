"""Accuracy of the model-zoo families trained on Fashion-MNIST (issue 16).

For each cached net of ``family_nets.py`` (train them first): accuracy (%) on the 10,000
test images of the ReLU ANN, the QCFS ANN (L = 8, 99.9th-percentile thresholds), the plain
SNN (``convert(rmpe=False, thresholds="percentile")``, the per-step outputs of one T = 16
model give T = 1, 2, 4, 8, 16) and the default ``convert()`` (thresholds searched for T +
RMPE, one conversion per T) at T = 1, 2, 4, 8, 16. Calibration: 512 training images (a
seeded permutation), onnxruntime threads 1. The rows are those of ``accuracy_fashion.py``
(its functions are reused); results go to ``--out`` (markdown) and ``.json`` beside it as
rows finish. ``--merge a.json,b.json`` joins runs made side by side into one report.

Usage::

    python benchmarks/family_accuracy.py [--nets resnet18,densenet] [--out F.md]
    python benchmarks/family_accuracy.py --merge a.json,b.json [--out F.md]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_fashion import (  # noqa: E402
    CALIB,
    DEFAULT,
    SEED,
    STEPS,
    _reference_rows,
    _table,
    cached,
    log,
    run_net,
)
from family_nets import DATA, FAMILIES, cache_name, load_fashion  # noqa: E402

OUT = "benchmarks/results/family_fashion.md"


def report(record: dict, meta: dict) -> str:
    out = ["# Model-zoo families on Fashion-MNIST: post-training accuracy (issue 16)", "",
           f"- command: `{meta['command']}`", f"- date: {meta['date']}",
           f"- machine: {meta['machine']}; load average {meta.get('load')}",
           f"- nets: `benchmarks/family_nets.py` (60k training images, epochs per net "
           f"below); "
           f"calibration: {CALIB} training images; L = 8; onnxruntime threads = 1.",
           "- accuracy (%) of the SNN's final output on all 10,000 test images; in brackets "
           "the ReLU ANN and the QCFS ANN (L = 8, percentile thresholds).", ""]
    out += _table(record, "full", STEPS)
    out += ["", f"Training epochs, conversion seconds of the default ({DEFAULT}) "
            "per T, and RMPE calibrations its own check rejected (kept without v_init):", ""]
    for name, r in record.items():
        secs = ", ".join(f"{k.split()[-1]} {v:.0f}s" for k, v in r.get("seconds", {}).items())
        line = f"- {name} ({r['description']}; {r['train']['epochs']} epoch(s)): {secs}"
        if r.get("rejected"):
            line += f"; rejected: {', '.join(r['rejected'])}"
        out.append(line)
    return "\n".join(out) + "\n"


def _save(record: dict, meta: dict, out: Path) -> None:
    meta["load"] = [round(v, 2) for v in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(record, meta))
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": record},
                                                   indent=1, default=float))


def _merge(files: list[str], out: Path) -> None:
    parts = [json.loads(Path(f).read_text()) for f in files]
    meta = {**parts[0]["meta"], "command": " + ".join(p["meta"]["command"] for p in parts)}
    record = {k: v for p in parts for k, v in p["results"].items()}
    for r in record.values():
        r["full"] = {row: {int(T): a for T, a in accs.items()} for row, accs in r["full"].items()}
    _save(record, meta, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default=",".join(FAMILIES))
    p.add_argument("--merge", default=None, help="comma-separated .json of earlier runs")
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", default=OUT)
    p.add_argument("--reference-only", action="store_true",
                   help="only the ReLU ANN, QCFS ANN and plain rows (no default conversions)")
    args = p.parse_args()
    out = Path(args.out)
    if args.merge:
        _merge(args.merge.split(","), out)
        return
    xtr, _, xte, yte = load_fashion(args.data)
    xcal = xtr[np.random.default_rng(SEED).permutation(len(xtr))[:CALIB]]
    meta = {"command": ("python benchmarks/family_accuracy.py " + " ".join(sys.argv[1:])).strip(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"2-core shared CPU ({platform.machine()}), no GPU; onnx "
                       f"{onnx.__version__}, onnxruntime {ort.__version__}"}
    record: dict = {}
    for name in args.nets.split(","):
        if args.reference_only:
            relu, info = cached(cache_name(name))
            r = record.setdefault(cache_name(name), {"description": info["description"],
                                                     "train": {k: info[k] for k in (
                                                         "epochs", "train_seconds",
                                                         "test_accuracy")}})
            _reference_rows(r, relu, xcal, (xte, yte), 0, STEPS, ())
        else:
            run_net(cache_name(name), xcal, (xte, yte), 0, STEPS, (), [], record,
                    lambda: _save(record, meta, out))
        record.get(cache_name(name), {}).pop("subset", None)
        _save(record, meta, out)
    log(f"done -> {out} ({DEFAULT})")


if __name__ == "__main__":
    sys.exit(main())
