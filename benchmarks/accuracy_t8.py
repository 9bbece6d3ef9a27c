"""Default ``convert`` (refine) at T=8 on the 12-epoch Fashion-MNIST nets, full test set.

Same protocol as ``benchmarks/accuracy_fashion.py``: 512 calibration images of the seed-0
permutation of the training set, onnxruntime one thread. Prints one JSON line per net.

Usage::

    python benchmarks/accuracy_t8.py vgg_bn_avg,resnet [--T 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import onnx_rmpe

sys.path.insert(0, str(Path(__file__).parent))
from accuracy_fashion import CALIB, SEED  # noqa: E402
from fashion_nets import cached, load_fashion  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("nets", help="comma-separated cached net names")
    p.add_argument("--T", type=int, default=8)
    args = p.parse_args()
    xtr, _, xte, yte = load_fashion()
    xcal = xtr[np.random.default_rng(SEED).permutation(len(xtr))[:CALIB]]
    for name in args.nets.split(","):
        found = cached(name)
        if found is None:
            sys.exit(f"{name}: not trained yet (python benchmarks/fashion_nets.py --only {name})")
        model, meta = found
        start = time.perf_counter()
        res = onnx_rmpe.convert(model, T=args.T, calib=xcal, threads=1)
        seconds = time.perf_counter() - start
        ev = onnx_rmpe.evaluate(res.snn, (xte, yte), threads=1)
        print(json.dumps({"net": name, "T": args.T, "relu": meta["test_accuracy"],
                          "snn": ev.accuracy, "per_step": ev.accuracy_per_step,
                          "seconds": seconds,
                          "rmpe_accepted": res.calibration.accepted}), flush=True)


if __name__ == "__main__":
    main()
