"""Per-layer scales of RMPE's ``v_init`` chosen by the output error (``refine_potentials``).

Issue 11, goal 2: after threshold refinement and weight reconstruction, zeroing convert's
calibrated ``v_init`` beat convert's own SNN in three of six cells (BENCHMARKS.md, "signed
neurons"). This measures :func:`onnx_rmpe.refine.refine_potentials` (each layer's
``v_init`` x 1, 1/2 or 0, front to back, by the output error to the ReLU ANN on the
calibration data; now a step of the default ``convert``) on the 12-epoch Fashion-MNIST
nets of ``fashion_nets.py``; protocol of ``accuracy_fashion.py`` (512 calibration images of
the seed-0 permutation of the training set, onnxruntime one thread). Per net and T:
``default`` (``convert`` as is), ``rmpe`` (its SNN just before the step: the former
default), ``zeroed`` (that SNN with every ``v_init`` x 0), each with the output error on
the calibration data and the test accuracy on the first ``--test`` test images. Appends
JSON lines to ``--out``.

Usage::

    python benchmarks/potential_scales.py vgg_bn_avg,resnet 2,4 [--test 2000]
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
from onnx_rmpe import conversion
from onnx_rmpe.data import Dataset
from onnx_rmpe.ops import DOMAIN, IF_OP
from onnx_rmpe.refine import output_error, with_potential_scales
from onnx_rmpe.thresholds import relu_reference

sys.path.insert(0, str(Path(__file__).parent))
from accuracy_fashion import CALIB, SEED, correct  # noqa: E402
from fashion_nets import cached, load_fashion  # noqa: E402


def measure(name: str, relu, xcal, xte, yte, T: int) -> dict:
    """``convert`` as is (``default``: with the potential refinement), the SNN just before
    that step (``rmpe``: the former default) and that SNN with every ``v_init`` zeroed."""
    before = {}
    refine = conversion.refine_potentials

    def recording(snn, *args, **kwargs):
        out = refine(snn, *args, **kwargs)
        before[id(out[1])] = snn
        return out

    conversion.refine_potentials = recording
    try:
        start = time.perf_counter()
        res = onnx_rmpe.convert(relu, T=T, calib=xcal, threads=1)
        convert_s = time.perf_counter() - start
    finally:
        conversion.refine_potentials = refine
    data = Dataset(xcal)
    reference = relu_reference(res.qcfs)
    report = res.potential_refine
    row = {"net": name, "T": T, "test": len(xte), "convert_s": convert_s,
           "choice": res.per_channel.as_dict()}
    models = {"default": res.snn}
    if report is not None:
        rmpe = before[id(report)]
        layers = [n.name for n in rmpe.graph.node if n.domain == DOMAIN and n.op_type == IF_OP]
        models.update(rmpe=rmpe, zeroed=with_potential_scales(rmpe, dict.fromkeys(layers, 0.0)))
        row.update(scales=report.scales, refine_potentials_s=report.seconds,
                   passes=report.passes)
    for kind, snn in models.items():
        row[kind] = {"output_error": output_error(snn, reference, data, threads=1),
                     "acc": float(correct(snn, xte, yte)[-1].mean())}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("nets")
    p.add_argument("steps")
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--out", default="benchmarks/results/potential_scales.jsonl")
    args = p.parse_args()
    xtr, _, xte, yte = load_fashion()
    xcal = xtr[np.random.default_rng(SEED).permutation(len(xtr))[:CALIB]]
    xte, yte = xte[:args.test], yte[:args.test]
    out = Path(args.out)
    for name in args.nets.split(","):
        relu, _ = cached(name)
        for T in (int(t) for t in args.steps.split(",")):
            row = {**measure(name, relu, xcal, xte, yte, T), "load": os.getloadavg()[0],
                   "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
