"""Cost of RMPE calibration at large T against one SNN pass (issue 14, goal 4).

A CIFAR-size CNN (32x32x3 inputs, 6 conv layers 16-16-32-32-64-64, average pooling after
each pair, one Gemm; random He-initialised weights, so activations keep their scale from
layer to layer: cost does not depend on training), 512 random calibration images, post-
training QCFS L=8, threads=1, batch 128, a memory budget (``--max-memory``, default 1 GB).
Each job runs in its own process (peak RSS from ``getrusage``), one after the other:

- ``snn``: one SNN pass, :func:`onnx_rmpe.evaluate` over the 512 samples (its default
  form), timed after a warm-up pass;
- ``no-rmpe``: ``convert(..., rmpe=False)`` (threshold search included);
- ``default``: ``convert(...)`` with RMPE, timed per phase (threshold search, ANN targets,
  per-layer sweep, final check) by wrapping the phase functions.

Prints a markdown table (seconds and units of one SNN pass). Usage::

    python benchmarks/calibration_cost.py [--T 32,64] [--max-memory 1G]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

CHANNELS = (16, 16, 32, 32, 64, 64)
SAMPLES = 512

CHILD = r"""
import json, resource, sys, time, functools
import numpy as np
job, model, calib, T, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \
    int(sys.argv[5])
import hashlib, importlib
cal = importlib.import_module("onnx_rmpe.calibration.job")
try:  # the job modules were renamed after e76d2be (--before builds may predate it)
    conv = importlib.import_module("onnx_rmpe.conversion")
    from onnx_rmpe.evaluation import evaluate
except ImportError:
    conv = importlib.import_module("onnx_rmpe.convert")
    from onnx_rmpe.evaluate import evaluate
phases, cpu = {}, {}
def timed(module, name, key):
    fn = getattr(module, name)
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            phases[key] = phases.get(key, 0.0) + time.perf_counter() - t
            cpu[key] = cpu.get(key, 0.0) + time.process_time() - c
    setattr(module, name, wrapper)
search = ("search_thresholds_and_outputs" if hasattr(conv, "search_thresholds_and_outputs")
          else "search_thresholds")
for module, name, key in ((conv, search, "threshold search"),
                          (cal, "_ann_means", "ANN targets"), (cal, "_sweep", "layer sweep"),
                          (cal, "_check", "final check"), (conv, "calibrate", "calibrate")):
    timed(module, name, key)
out = {}
if job == "snn":
    snn = conv.convert(model, T=T, calib=calib, rmpe=False, thresholds="percentile",
                       threads=1).snn
    y = np.zeros(len(np.load(calib)["x"]), np.int64)
    x = np.load(calib)["x"]
    evaluate(snn, (x, y), batch_size=128, threads=1, max_memory=budget)  # warm-up
    t, c = time.perf_counter(), time.process_time()
    evaluate(snn, (x, y), batch_size=128, threads=1, max_memory=budget)
    out["seconds"], out["cpu"] = time.perf_counter() - t, time.process_time() - c
else:
    t, c = time.perf_counter(), time.process_time()
    res = conv.convert(model, T=T, calib=calib, rmpe=job == "default", threads=1,
                       batch_size=128, max_memory=budget)
    out["seconds"], out["cpu"] = time.perf_counter() - t, time.process_time() - c
    digest = hashlib.sha256()  # thresholds and initial potentials, bit for bit
    for init in sorted(res.snn.graph.initializer, key=lambda t: t.name):
        digest.update(init.name.encode() + init.SerializeToString())
    out["params_sha256"] = digest.hexdigest()[:16]
    if res.calibration is not None:
        out["spike_cache_bytes"] = res.calibration.spike_cache_bytes
        out["accepted"] = res.calibration.accepted
out["phases"], out["cpu_phases"] = phases, cpu
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def cifar_net(rng: np.random.Generator) -> onnx.ModelProto:
    nodes, inits, c_in, x, size = [], [], 3, "x", 32
    for i, c in enumerate(CHANNELS):
        w = rng.normal(0, np.sqrt(2 / (9 * c_in)), (c, c_in, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.05, c).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c_in = f"r{i}", c
        if i % 2 == 1:
            nodes.append(helper.make_node("AveragePool", [x], [f"p{i}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x, size = f"p{i}", size // 2
    flat = c_in * size * size
    fc = rng.normal(0, np.sqrt(2 / flat), (10, flat)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes += [helper.make_node("Flatten", [x], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cifar_cnn",
                              [helper.make_tensor_value_info("x", 1, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", 1, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def run_job(job: str, model: Path, calib: Path, T: int, budget: int,
            pythonpath: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    proc = subprocess.run([sys.executable, "-c", CHILD, job, str(model), str(calib), str(T),
                           str(budget)], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir() if pythonpath else None)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", default="32,64")
    ap.add_argument("--max-memory", default="1G")
    ap.add_argument("--jobs", default="snn,no-rmpe,default")
    ap.add_argument("--samples", type=int, default=SAMPLES)
    ap.add_argument("--before", default=None,
                    help="a site directory with another build of onnx_rmpe (e.g. `pip install "
                         "--no-deps --target DIR` of an older commit): each job also runs with "
                         "it, right after this tree's (interleaved), rows `before: ...`")
    args = ap.parse_args()
    from onnx_rmpe.runtime.memory import parse_size

    budget = parse_size(args.max_memory)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, calib = Path(tmp) / "cnn.onnx", Path(tmp) / "calib.npz"
        onnx.save(cifar_net(rng), str(model))
        np.savez(calib, x=rng.random((SAMPLES, 3, 32, 32), dtype=np.float32)[:args.samples])
        for T in [int(t) for t in args.T.split(",")]:
            res = {}
            for job in args.jobs.split(","):
                res[job] = run_job(job, model, calib, T, budget)
                if args.before:
                    res[f"before: {job}"] = run_job(job, model, calib, T, budget, args.before)
            rows.append((T, res))
            sys.stderr.write(json.dumps({"T": T, **res}) + "\n")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = [f"Command: `python benchmarks/calibration_cost.py --T {args.T} --max-memory "
           f"{args.max_memory} --jobs {args.jobs}`; {date}; 2-core shared CPU, no GPU; "
           f"threads=1, batch 128, {args.samples} samples.", "",
           "| T | job | seconds | / SNN pass | CPU seconds | / SNN pass (CPU) | peak RSS (MB) "
           "| spike caches peak (MiB) | parameters (sha256) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for T, res in rows:
        for job, r in res.items():
            before = "before: " if job.startswith("before: ") else ""
            unit, cpu_unit = res[f"{before}snn"]["seconds"], res[f"{before}snn"]["cpu"]
            cache = r.get("spike_cache_bytes")
            out.append(f"| {T} | {job} | {r['seconds']:.1f} | {r['seconds'] / unit:.2f} | "
                       f"{r['cpu']:.1f} | {r['cpu'] / cpu_unit:.2f} | {r['rss_mb']:.0f} | "
                       f"{'-' if cache is None else f'{cache / 2**20:.1f}'} | "
                       f"{r.get('params_sha256', '-')} |")
            for key, sec in r.get("phases", {}).items() if job.endswith("default") else ():
                c = r["cpu_phases"][key]
                out.append(f"| {T} | {job}: {key} | {sec:.1f} | {sec / unit:.2f} | {c:.1f} | "
                           f"{c / cpu_unit:.2f} | | | |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
