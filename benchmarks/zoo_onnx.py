"""ONNX model-zoo architectures (the light models in the onnx wheel) through the converter.

Two parts, each printing markdown rows (and appending them to ``--out``):

``zoo``: every ``light_*.onnx`` of the installed onnx wheel, random He weights
(:mod:`onnx_rmpe.lightzoo`), 224x224, converted at T=4 and T=32 (RMPE on, 16 random
calibration inputs, 1 thread), each conversion in a child process: outcome (or the first
blocker), seconds, peak RSS. Then the SNN's distance to the clip ANN at T = 4, 32, 256:
``|y_snn - y_ann| / |y_ann - mean class score|`` on the logits (final Softmax dropped;
random deep nets are chaotic, so top-1 agreement means nothing), from the running output
of one uncalibrated T=256 SNN, 4 inputs, at a reduced input size (``--dist-size``, 64) for
the nets whose shapes allow it (not measured for the others).

``--timeout S`` stops a conversion after S seconds and reports it as time-boxed;
``--skip-distance`` measures the conversions only.

``speed``: one model at 224x224 (``--model``, resnet50), T=4, ``--samples`` (64) random
calibration inputs, 1 thread: full conversion time (thresholds, SNN, RMPE calibration, the
final check) against the time of one SNN pass over the same samples, measured in the same
process, with the peak RSS and the spike caches' peak disk use.

Usage::

    python benchmarks/zoo_onnx.py zoo [--out benchmarks/results/zoo_onnx.md]
    python benchmarks/zoo_onnx.py speed --model resnet50 --samples 64
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

MACHINE = "2-core shared CPU, no GPU"


def _inputs(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def _peak_rss_gib(pid: str = "self") -> float:
    """Peak RSS of this process (or ``pid``): VmHWM (ru_maxrss survives exec, so a spawned
    child would report its parent's peak when that is higher)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _convert_child(name: str, T: int, samples: int, max_memory: str | None, queue) -> None:
    from onnx_rmpe.conversion import convert
    from onnx_rmpe.errors import ConversionError
    from onnx_rmpe.lightzoo import light_model
    from onnx_rmpe.runtime.memory import parse_size

    model = light_model(name)
    x = _inputs(samples, 224)
    start = time.perf_counter()
    try:
        result = convert(model, T=T, calib=x, threads=1, batch_size=16,
                         max_memory=parse_size(max_memory))
        cal = result.calibration
        out = {"outcome": "converted", "layers": len(result.thresholds),
               "rmpe": "accepted" if cal and cal.accepted else "rejected",
               "cache_mib": round(cal.spike_cache_bytes / 2**20, 1) if cal else 0.0,
               "refine": "ran" if result.threshold_refine else "skipped",
               "reconstruct": "ran" if result.reconstruction else "skipped"}
    except ConversionError as exc:
        lines = str(exc).splitlines()
        out = {"outcome": "refused", "reason": lines[1].strip() if len(lines) > 1 else lines[0]}
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["peak_rss_gib"] = round(_peak_rss_gib(), 2)
    queue.put(out)


def _isolated(fn, *args, timeout: float | None = None) -> dict:
    """Run ``fn(*args, queue)`` in a spawned child; stop it after ``timeout`` seconds."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=args + (queue,))
    start = time.perf_counter()
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        peak = _peak_rss_gib(str(proc.pid))  # so far
        proc.terminate()
        proc.join()
        return {"outcome": "time-boxed", "reason": f"not finished in {timeout:.0f} s",
                "seconds": round(time.perf_counter() - start, 1),
                "peak_rss_gib": f"{peak:.2f} (at the stop)"}
    return queue.get() if not queue.empty() else {"outcome": f"crashed ({proc.exitcode})"}


def distances(name: str, size: int, n: int, steps: tuple[int, ...]) -> list[float]:
    """Distance of the uncalibrated SNN's running output after each step to the clip ANN."""
    from onnx_rmpe.calibration import CLIP_LEVELS, qcfs_with_levels
    from onnx_rmpe.conversion import convert
    from onnx_rmpe.lightzoo import light_model
    from onnx_rmpe.runtime.session import make_session

    model = light_model(name, size=size, softmax=False)
    x = _inputs(n, size, seed=1)
    T = max(steps)
    result = convert(model, T=T, calib=x, rmpe=False, threads=1, batch_size=n)
    ann = make_session(qcfs_with_levels(result.qcfs, CLIP_LEVELS), threads=1)
    want = ann.run(None, {ann.get_inputs()[0].name: x})[0].reshape(n, -1)
    snn = make_session(result.snn, threads=1)
    out = result.snn.graph.output[0].name + "_per_step"
    per_step = snn.run([out], {snn.get_inputs()[0].name: x})[0].reshape(T, n, -1)
    scale = np.linalg.norm(want - want.mean(-1, keepdims=True))
    return [float(np.linalg.norm(per_step[t - 1] - want) / scale) for t in steps]


def zoo(args) -> list[str]:
    from onnx_rmpe.lightzoo import LIGHT_MODELS, SIZE_FREE

    steps = tuple(args.T)
    rows = ["| model | outcome | " + " | ".join(
        f"T={T} s | T={T} peak RSS GiB | T={T} spike cache MiB" for T in steps)
        + " | distance T=4 | T=32 | T=256 | distance input |", "|---" * (6 + 3 * len(steps)) + "|"]
    for name in args.models or LIGHT_MODELS:
        runs = {T: _isolated(_convert_child, name, T, args.samples, args.max_memory,
                             timeout=args.timeout)
                for T in steps}
        print(name, json.dumps(runs), flush=True)
        first = runs[steps[0]]
        if first["outcome"] != "converted":
            rows.append(f"| {name} | {first['outcome']}: {first.get('reason', '')} | "
                        f"{first['seconds']} | {first['peak_rss_gib']} |"
                        + " |" * (3 * len(steps) + 2))
            continue
        if name in SIZE_FREE and not args.skip_distance:
            dist = distances(name, args.dist_size, 4, (4, 32, 256))
            where = f"{args.dist_size}x{args.dist_size}, 4 inputs"
        else:
            dist = [float("nan")] * 3
            where = ("not measured (--skip-distance)" if args.skip_distance
                     else "not measured (shapes fixed to 224x224)")
        cells = [f"{runs[T].get(k, runs[T].get('reason', ''))}" for T in steps
                 for k in ("seconds", "peak_rss_gib", "cache_mib")]
        rmpe = "/".join(str(runs[T].get("rmpe")) for T in steps)
        steps_run = "/".join(f"refine {runs[T].get('refine')}, reconstruct "
                             f"{runs[T].get('reconstruct')}" for T in steps)
        rows.append(f"| {name} | converted ({first['layers']} spiking layers, RMPE {rmpe}; "
                    f"{steps_run}) | "
                    + " | ".join(cells) + " | "
                    + " | ".join("n/a" if np.isnan(d) else f"{d:.3f}" for d in dist)
                    + f" | {where} |")
        print(rows[-1], flush=True)
    return rows


def speed(args) -> list[str]:
    from onnx_rmpe.conversion import convert
    from onnx_rmpe.lightzoo import light_model
    from onnx_rmpe.runtime.session import batches, make_session

    model = light_model(args.model)
    x = _inputs(args.samples, 224)
    start = time.perf_counter()
    result = convert(model, T=args.T, calib=x, threads=1, batch_size=args.batch_size)
    total = time.perf_counter() - start
    cal = result.calibration
    session = make_session(result.snn, threads=1)
    name = session.get_inputs()[0].name
    passes = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for sl in batches(len(x), args.batch_size):
            session.run(None, {name: x[sl]})
        passes.append(time.perf_counter() - t0)
    one = float(np.median(passes))
    row = (f"| {args.model} | 224x224 | {args.T} | {args.samples} | {total:.0f} | "
           f"{cal.seconds:.0f} | {one:.0f} ({', '.join(f'{p:.0f}' for p in passes)}) | "
           f"{total / one:.1f} | {_peak_rss_gib():.2f} | {cal.spike_cache_bytes / 2**20:.0f} |")
    return ["| model | input | T | samples | conversion s | of which RMPE s | one SNN pass s "
            "(runs) | ratio | peak RSS GiB | spike cache peak MiB |", "|---" * 10 + "|", row]


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="part", required=True)
    z = sub.add_parser("zoo")
    z.add_argument("--models", nargs="*")
    z.add_argument("--samples", type=int, default=16)
    z.add_argument("--T", type=int, nargs="+", default=[4, 32])
    z.add_argument("--dist-size", type=int, default=64)
    z.add_argument("--max-memory", default=None,
                   help="convert's memory budget (e.g. 14G; default: half the available memory)")
    z.add_argument("--timeout", type=float, default=None,
                   help="stop a conversion after this many seconds (reported as time-boxed)")
    z.add_argument("--skip-distance", action="store_true",
                   help="conversions only (the distance does not depend on the T converted)")
    s = sub.add_parser("speed")
    s.add_argument("--model", default="resnet50")
    s.add_argument("--samples", type=int, default=64)
    s.add_argument("--T", type=int, default=4)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--repeats", type=int, default=2)
    for p in (z, s):
        p.add_argument("--out", default=f"benchmarks/results/zoo_onnx_{p.prog.split()[-1]}.md")
    args = ap.parse_args()
    start = time.time()
    rows = zoo(args) if args.part == "zoo" else speed(args)
    cmd = "python benchmarks/zoo_onnx.py " + " ".join(sys.argv[1:])
    footer = (f"\nCommand: `{cmd}`; machine: {MACHINE}; date: {datetime.date.today()}; "
              f"{time.time() - start:.0f} s.\n")
    text = "\n".join(rows) + "\n" + footer
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
