"""Where to refine thresholds at the output (issue 11): variants on the first test images.

For one cached Fashion-MNIST net (``fashion_nets.py``) and each T: the former default
(search + RMPE), **B** (search, output refinement, RMPE), **C** (search, RMPE, refinement
of the calibrated SNN) and **D** (B, then C on its result: the new default of
``convert``). Accuracy of the final output on the first N test images; calibration as in
``accuracy_fashion.py`` (512 seeded training images), L = 8, one thread.

Usage::

    python benchmarks/refine_variants.py NET T1,T2,... N
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from onnx_rmpe.calibration import CLIP_LEVELS, calibrate, qcfs_with_levels
from onnx_rmpe.conversion import build_qcfs, qcfs_to_snn
from onnx_rmpe.data import Dataset
from onnx_rmpe.refine import refine_thresholds, with_thresholds
from onnx_rmpe.thresholds import relu_reference, search_thresholds, set_thresholds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_fashion import correct  # noqa: E402
from fashion_nets import DATA, cached, load_fashion  # noqa: E402


def main() -> None:
    net, steps, n = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], int(sys.argv[3])
    relu, meta = cached(net)
    print(net, "epochs", meta["epochs"], "ANN", meta["test_accuracy"], flush=True)
    xtr, _, xte, yte = load_fashion(DATA)
    data = Dataset(xtr[np.random.default_rng(0).permutation(len(xtr))[:512]])
    x, y = xte[:n], yte[:n]
    qcfs, _ = build_qcfs(relu, data, levels=8, threads=1)
    ref = relu_reference(qcfs)

    def rmpe(q, T):
        return calibrate(qcfs_to_snn(q, T=T), q, data, threads=1,
                         reference=qcfs_with_levels(q, CLIP_LEVELS)).snn

    def acc(model) -> float:
        return float(correct(model, x, y)[-1].mean())

    def refine(build, start):
        chosen, rep = refine_thresholds(build, ref, data, start, threads=1)
        return chosen, f"err {rep.error_start:.4g}->{rep.error_end:.4g} {rep.passes} passes"

    for T in steps:
        t0 = time.time()
        chosen, _ = search_thresholds(qcfs_to_snn(qcfs, T=T), qcfs, data, T=T, phi=0.5,
                                      threads=1)
        cal = rmpe(set_thresholds(qcfs, chosen), T)
        print(f"{net} T={T} former default {acc(cal):.4f} ({time.time() - t0:.0f}s)", flush=True)
        th_b, info = refine(lambda th, T=T: qcfs_to_snn(set_thresholds(qcfs, th), T=T), chosen)
        cal_b = rmpe(set_thresholds(qcfs, th_b), T)
        print(f"{net} T={T} B {acc(cal_b):.4f} {info}", flush=True)
        th_c, info = refine(lambda th, cal=cal: with_thresholds(cal, th), chosen)
        print(f"{net} T={T} C {acc(with_thresholds(cal, th_c)):.4f} {info}", flush=True)
        th_d, info = refine(lambda th, cal=cal_b: with_thresholds(cal, th), th_b)
        print(f"{net} T={T} D {acc(with_thresholds(cal_b, th_d)):.4f} {info}", flush=True)


if __name__ == "__main__":
    main()
