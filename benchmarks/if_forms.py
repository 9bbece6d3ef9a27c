"""Which IF formulation and onnxruntime optimization level run the multi-step SNN fastest.

    python benchmarks/if_forms.py [--T 4,8,32] [--batch 1,64] [--threads 1] [--rounds 9]

The networks of benchmarks/runtime.py (VGG-like, ResNet-like; 28x28x1 input) are converted
once; the same SNN is then written with each IF body (``unrolled``: Split / elementwise /
Concat; ``scan``: Reshape + Scan) and run under several graph optimization levels, all
variants interleaved round by round; medians in ms per inference of all T steps, beside
T x the ANN (ENABLE_ALL). Every variant's output is checked bit-identical to the Scan
model's first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

LEVELS = {"all": "ORT_ENABLE_ALL", "layout": "ORT_ENABLE_LAYOUT", "extended": "ORT_ENABLE_EXTENDED"}


def with_form(snn, form: str):
    import onnx

    from onnx_rmpe.modelio import ensure_functions
    from onnx_rmpe.runtime.neurons import DOMAIN, IF_OP
    model = onnx.ModelProto.FromString(snn.SerializeToString())
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == IF_OP:
            for a in list(node.attribute):
                if a.name == "form":
                    node.attribute.remove(a)
            node.attribute.append(onnx.helper.make_attribute("form", form))
    return ensure_functions(model)


def session(model, level: str, threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level], None) \
        or ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", default="4,8,32")
    p.add_argument("--batch", default="1,64")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--levels", default="all,extended")
    args = p.parse_args()
    import importlib.util

    import onnxruntime as ort

    from onnx_rmpe.conversion import convert, qcfs_to_snn
    spec = importlib.util.spec_from_file_location("runtime_bench", HERE / "runtime.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from tests.helpers import export_torch
    levels = [lv for lv in args.levels.split(",")
              if hasattr(ort.GraphOptimizationLevel, LEVELS[lv])]
    print(f"onnxruntime {ort.__version__}, threads {args.threads}, levels {levels}")
    print("| net | T | batch | T x ANN | " + " | ".join(
        f"{f} {lv}" for f in ("scan", "unrolled") for lv in levels) + " |")
    x_cal = np.random.default_rng(0).random((256, 1, 28, 28), dtype=np.float32)
    for kind in ("vgg", "resnet"):
        ann = export_torch(bench.build_net(kind), x_cal)
        qcfs = convert(ann, T=4, calib=x_cal, rmpe=False).qcfs
        ann_sess = session(ann, "all", args.threads)
        for T in map(int, args.T.split(",")):
            snn = qcfs_to_snn(qcfs, T=T)
            variants = {(f, lv): session(with_form(snn, f), lv, args.threads)
                        for f in ("scan", "unrolled") for lv in levels}
            for batch in map(int, args.batch.split(",")):
                x = np.random.default_rng(1).random((batch, 1, 28, 28), dtype=np.float32)
                feed = {"input": x} if ann_sess.get_inputs()[0].name == "input" else \
                    {ann_sess.get_inputs()[0].name: x}
                for (form, lv), s in variants.items():  # same level: same kernels, same bits
                    ref = variants[("scan", lv)].run(None, feed)[0]
                    assert np.array_equal(s.run(None, feed)[0], ref), (kind, T, batch, form, lv)
                runs = {"ann": lambda a=ann_sess, f=feed, n=T: [a.run(None, f) for _ in range(n)]}
                runs.update({k: (lambda s=s, f=feed: s.run(None, f)) for k, s in variants.items()})
                times = {k: [] for k in runs}
                for _ in range(args.rounds):
                    for k, fn in runs.items():
                        start = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - start)
                med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
                cells = [f"{med[k]:.1f} ({med[k] / med['ann']:.2f})" for k in variants]
                print(f"| {kind} | {T} | {batch} | {med['ann']:.1f} | " + " | ".join(cells)
                      + " |", flush=True)


if __name__ == "__main__":
    main()
