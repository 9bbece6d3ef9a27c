"""Cost of RMPE calibration against one SNN forward pass, with and without the final check.

Trains the two nets of ``rmpe_fashion.py`` (same code, same seed), converts them without
RMPE (post-training QCFS, L=8) and times, interleaved and repeated, on the same 512
calibration images (batch 128, threads=1): one SNN forward pass (session built and warmed
up beforehand); ``calibrate(check=False)``; ``calibrate(check=True)`` (the default). Prints
a markdown table of medians and ratios. Usage::

    python benchmarks/rmpe_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import rmpe_fashion as rf  # noqa: E402

from onnx_rmpe.calibration import calibrate  # noqa: E402
from onnx_rmpe.conversion import convert  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data", default="/work/shared/data/fashion_mnist.npz")
    args = ap.parse_args()
    with np.load(args.data) as d:
        x_all, y_all = d["x_train"], d["y_train"].astype(np.int64)
    rng = np.random.default_rng(rf.SEED)
    tr = rng.permutation(len(x_all))[:10000]
    cal = rng.permutation(len(x_all))[:512]
    scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
    xtr, ytr, xc = scale(x_all[tr]), y_all[tr], scale(x_all[cal])
    rows = []
    for name, make in rf.NETS:
        net, _ = rf.train(make(), xtr, ytr, 2)
        relu = rf.export(net, xtr)
        for T in (4, 8):
            plain = convert(relu, T=T, calib=xc, rmpe=False, threads=rf.THREADS)
            times = {"forward": [], "calibrate (check=False)": [], "calibrate (default)": []}
            for _ in range(args.repeats):
                times["forward"].append(rf.forward_seconds(plain.snn, xc, rf.CALIB_BATCH))
                for key, check in (("calibrate (check=False)", False),
                                   ("calibrate (default)", True)):
                    start = time.perf_counter()
                    calibrate(plain.snn, plain.qcfs, xc, batch_size=rf.CALIB_BATCH,
                              threads=rf.THREADS, check=check)
                    times[key].append(time.perf_counter() - start)
            med = {k: float(np.median(v)) for k, v in times.items()}
            rows.append((name, T, med))
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    out = [f"Command: `python benchmarks/rmpe_cost.py --repeats {args.repeats}`; {date}; "
           "2-core CPU, threads=1, 512 calibration images, batch 128; medians of "
           f"{args.repeats} interleaved repeats.", "",
           "| net | T | SNN forward (s) | calibrate, check=False (s) | ratio | "
           "calibrate, default (s) | ratio |", "|---|---|---|---|---|---|---|"]
    for name, T, m in rows:
        f = m["forward"]
        out.append(f"| {name} | {T} | {f:.3f} | {m['calibrate (check=False)']:.3f} | "
                   f"{m['calibrate (check=False)'] / f:.2f} | {m['calibrate (default)']:.3f} | "
                   f"{m['calibrate (default)'] / f:.2f} |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
