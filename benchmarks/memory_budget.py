"""Peak memory of a conversion with and without a memory budget (issue 9).

A VGG-like CNN on 28x28x1 inputs (random He-initialised weights: memory does not depend on
training), 1024 calibration samples, RMPE at T = 16 and 64. Each conversion runs in its own
process; the peak resident set size comes from ``resource.getrusage(RUSAGE_CHILDREN)``.
Writes ``benchmarks/results/memory_budget.md``.

Usage::

    python benchmarks/memory_budget.py
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = Path(__file__).resolve().parent


def vgg_like(rng: np.random.Generator) -> onnx.ModelProto:
    nodes, inits, c_in, x = [], [], 1, "x"
    for i, c in enumerate((16, 32, 32, 64)):
        w = rng.normal(0, np.sqrt(2 / (9 * c_in)), (c, c_in, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
        if i % 2 == 1:
            nodes.append(helper.make_node("AveragePool", [x], [f"p{i}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"p{i}"
        c_in = c
    fc = rng.normal(0, np.sqrt(2 / (64 * 49)), (10, 64 * 49)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes += [helper.make_node("Flatten", [x], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inputs = [helper.make_tensor_value_info("x", 1, ["N", 1, 28, 28])]
    graph = helper.make_graph(nodes, "vgg", inputs,
                              [helper.make_tensor_value_info("y", 1, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


CHILD = """
import resource, sys, time
from onnx_rmpe.conversion import convert
args = sys.argv[1:]
budget = None if args[3] == "none" else int(args[3])
t = time.perf_counter()
convert(args[0], T=int(args[2]), calib=args[1], threads=1, max_memory=budget)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, calib = Path(tmp) / "vgg.onnx", Path(tmp) / "calib.npz"
        onnx.save(vgg_like(rng), str(model))
        np.savez(calib, x=rng.random((1024, 1, 28, 28), dtype=np.float32))
        for T in (16, 64):
            for budget in ("none", str(1 << 30), str(256 << 20)):
                out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(calib),
                                      str(T), budget], capture_output=True, text=True,
                                     check=True).stdout.split()
                seconds, rss_kb = float(out[0]), int(out[1])
                label = "default (half the available memory)" if budget == "none" else \
                    f"{int(budget) >> 20} MB"
                rows.append((T, label, rss_kb / 1024, seconds))
                print(rows[-1], flush=True)
    lines = [f"# Memory budget ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
             f"{platform.python_version()}; `python benchmarks/memory_budget.py`)", "",
             "VGG-like 28x28 CNN (4 conv layers, 16-64 channels), 1024 calibration samples given "
             "(512 used: `--calib-samples` default), RMPE on, 1 thread, `--batch-size 128`.", "",
             "| T | --max-memory | peak RSS (MB) | seconds |", "|---|---|---|---|"]
    lines += [f"| {T} | {label} | {rss:.0f} | {sec:.1f} |" for T, label, rss, sec in rows]
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "memory_budget.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
