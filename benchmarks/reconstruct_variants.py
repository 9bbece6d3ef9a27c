"""Weight reconstruction (``convert(reconstruct=...)``) vs the default, 12-epoch Fashion nets.

Protocol of ``accuracy_fashion.py`` (512 calibration images of the seed-0 permutation of the
training set, onnxruntime one thread); accuracy on the first ``N`` test images (and on the
first 2000). Prints one JSON line per conversion (accuracy, per-step accuracy, final output
error of the refinement, per-layer fit errors, seconds).

Usage::

    python benchmarks/reconstruct_variants.py vgg_bn_avg,resnet 4 weights,bias [2000]
    python benchmarks/reconstruct_variants.py vgg_bn_avg 4 weights,weights:layer 2000

A mode ``M:layer`` converts with one QCFS threshold per layer (``per_channel=False``); the
default is per channel (``passes/equalize_channels.py``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import onnx_rmpe

sys.path.insert(0, str(Path(__file__).parent))
from accuracy_fashion import CALIB, SEED, correct  # noqa: E402
from fashion_nets import cached, load_fashion  # noqa: E402


def main() -> None:
    nets, steps, modes = (a.split(",") for a in sys.argv[1:4])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    xtr, _, xte, yte = load_fashion()
    xcal = xtr[np.random.default_rng(SEED).permutation(len(xtr))[:CALIB]]
    for name in nets:
        model, meta = cached(name)
        for T in map(int, steps):
            for variant in modes:
                mode, _, scope = variant.partition(":")
                start = time.perf_counter()
                res = onnx_rmpe.convert(model, T=T, calib=xcal, threads=1, reconstruct=mode,
                                        per_channel=scope != "layer")
                seconds = time.perf_counter() - start
                hits = correct(res.snn, xte[:n], yte[:n])
                fits = res.reconstruction.layers if res.reconstruction else []
                print(json.dumps({
                    "net": name, "T": T, "reconstruct": mode, "test": n,
                    "thresholds_per": scope or "channel",
                    "relu": meta["test_accuracy"], "snn": float(hits[-1].mean()),
                    "snn_first_2000": float(hits[-1, :2000].mean()),
                    "per_step": hits.mean(1).tolist(),
                    "output_error": [r.error_end for r in res.threshold_refine],
                    "fits": [(f.name, f.error_before, f.error_after) for f in fits],
                    "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
