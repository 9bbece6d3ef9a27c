"""Runtime benchmark: the SNN forms in onnxruntime vs SpikingJelly, 1 and 2 threads.

    python benchmarks/runtime.py [--quick] [--threads 1,2] [--out benchmarks/results/runtime.md]

onnxruntime runs with intra_op = the thread count, torch with set_num_threads. For each
network (VGG-like, ResNet-like; 28x28x1 input, random weights, thresholds calibrated on
uniform noise), T, batch and thread count, the methods run interleaved (one run of each
per round) and the median over rounds is reported (wall clock; for 1 thread also the
process CPU time, steadier on a shared machine):

* ``scan``       the multi-step SNN with the Scan IF body (the previous default),
* ``unrolled``   the multi-step SNN with the unrolled IF body (Split / elementwise / Concat),
* ``net``        the network-unrolled SNN (the streaming step chained T times in one graph)
  with the blocked IF step (depthwise 1x1 convs and Relus that onnxruntime keeps in its
  NCHWc layout, :mod:`onnx_rmpe.passes.blocked_if_step`; the default since round five),
* ``netplain``   the same with the plain IF step (GreaterOrEqual / Cast / Mul / Sub; the
  ``net`` form of rounds two to four),
* ``chunk4``     the chunked SNN, 4 steps per call (T/4 calls, state carried),
* ``stream``     the streaming SNN (T session runs, states fed back),
* ``sj``         SpikingJelly multi-step (IFNode(v_reset=None, step_mode='m'), ann2snn-style
  threshold scaling, input repeated T times, layers on [T*N, ...] via SeqToANNContainer),
* ``T x ANN``    T times one run of the ANN in onnxruntime.

All SNNs are the same network: same weights, thresholds theta, start potential theta/2,
cumulative max pools. Peak memory: VmHWM (peak RSS) of a fresh subprocess per config
(one run), and its growth over the RSS after loading.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ORT_FORMS = ["scan", "unrolled", "net", "netplain", "chunk4", "stream"]
METHODS = [*ORT_FORMS, "sj", "T x ANN"]


def build_net(kind: str):
    import torch
    import torch.nn as nn
    torch.manual_seed(0)
    if kind == "vgg":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)).eval()

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1)
            self.r1 = nn.ReLU()
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
            self.short = (nn.Identity() if stride == 1 and cin == cout
                          else nn.Conv2d(cin, cout, 1, stride))
            self.r2 = nn.ReLU()

        def forward(self, x):
            return self.r2(self.c2(self.r1(self.c1(x))) + self.short(x))

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), Block(16, 16, 1),
                         Block(16, 32, 2), Block(32, 32, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10)).eval()


def spiking_torch(net, thetas: list[float], neuron: str):
    """The SNN as torch modules: ReLU -> IF (SpikingJelly or plain), MaxPool cumulative."""
    import copy

    import torch
    import torch.nn as nn
    net = copy.deepcopy(net)
    it = iter(thetas)

    class PlainIF(nn.Module):  # multi-step over [T, N, ...]
        def __init__(self, theta: float) -> None:
            super().__init__()
            self.theta = theta

        def forward(self, x):
            v = torch.full_like(x[0], 0.5 * self.theta)
            out = torch.empty_like(x)
            for t in range(len(x)):
                v = v + x[t]
                s = (v >= self.theta).to(x.dtype) * self.theta
                v = v - s
                out[t] = s
            return out

    class SJIF(nn.Module):  # ann2snn style: scale, IFNode(threshold 1), scale back
        def __init__(self, theta: float) -> None:
            super().__init__()
            from spikingjelly.activation_based import neuron as sjn
            self.theta = theta
            self.node = sjn.IFNode(v_threshold=1.0, v_reset=None, step_mode="m")

        def forward(self, x):
            self.node.reset()
            self.node.v = 0.5
            return self.node(x / self.theta) * self.theta

    class CumPool(nn.Module):  # cumulative max pool over [T, N, ...]
        def __init__(self, pool) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, x):
            T, N = x.shape[:2]
            c = self.pool(x.cumsum(0).flatten(0, 1))
            c = c.view(T, N, *c.shape[1:])
            return torch.cat([c[:1], c[1:] - c[:-1]])

    class Seq(nn.Module):  # an ANN module on [T, N, ...]
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, x):
            y = self.m(x.flatten(0, 1))
            return y.view(*x.shape[:2], *y.shape[1:])

    def convert(m):
        for name, child in m.named_children():
            if isinstance(child, nn.ReLU):
                theta = next(it)
                setattr(m, name, SJIF(theta) if neuron == "sj" else PlainIF(theta))
            elif isinstance(child, nn.MaxPool2d):
                setattr(m, name, CumPool(child))
            elif isinstance(child, (nn.Conv2d, nn.Linear, nn.Flatten, nn.AdaptiveAvgPool2d)):
                setattr(m, name, Seq(child))
            elif isinstance(child, nn.Identity):
                continue
            else:
                convert(child)
        return m

    return convert(net)


def prepare(workdir: Path, kind: str, Ts: list[int]) -> dict:
    """Export the ANN, convert, write every SNN form; returns the thresholds."""
    import onnx

    from onnx_rmpe.conversion import convert, qcfs_to_snn
    from onnx_rmpe.forms import snn_to_chunked, snn_to_streaming, snn_to_unrolled
    sys.path.insert(0, str(HERE.parent))
    from tests.helpers import export_torch
    x = np.random.default_rng(0).random((256, 1, 28, 28), dtype=np.float32)
    ann = export_torch(build_net(kind), x)
    onnx.save(ann, str(workdir / f"{kind}_ann.onnx"))
    # percentile thresholds: the timing does not depend on how they were chosen, and the
    # threshold search of the default conversion took minutes per net on the loaded machine
    res = convert(ann, T=Ts[0], calib=x, rmpe=False, thresholds="percentile",
                  reconstruct="none")
    thetas = [float(onnx.numpy_helper.to_array(i)) for n in res.snn.graph.node
              if n.op_type == "IFNeuron" for i in res.snn.graph.initializer if i.name == n.input[1]]
    for T in Ts:
        scan = qcfs_to_snn(res.qcfs, T=T, form="scan")
        forms = {"scan": scan, "unrolled": qcfs_to_snn(res.qcfs, T=T, form="unrolled"),
                 "net": snn_to_unrolled(scan), "netplain": snn_to_unrolled(scan, step="plain"),
                 "stream": snn_to_streaming(scan),
                 "chunk4": snn_to_chunked(res.qcfs, scan, chunk=min(4, T))}
        for name, model in forms.items():
            onnx.save(model, str(workdir / f"{kind}_{name}_T{T}.onnx"))
    return {"thetas": thetas}


class Runner:
    """Loads one method for one config; ``__call__`` runs it once."""

    def __init__(self, method: str, workdir: Path, kind: str, T: int, batch: int,
                 thetas: list[float], threads: int = 1) -> None:
        self.x = np.random.default_rng(1).random((batch, 1, 28, 28), dtype=np.float32)
        self.T = T
        if method in ORT_FORMS or method == "T x ANN":
            import onnx
            import onnxruntime as ort

            from onnx_rmpe.runtime.streaming import StreamingRunner
            path = workdir / (f"{kind}_ann.onnx" if method == "T x ANN"
                              else f"{kind}_{method}_T{T}.onnx")
            if method in ("stream", "chunk4"):
                runner = StreamingRunner(onnx.load(str(path)), threads=threads)
                self.fn = lambda: runner.run(self.x, T)[-1]
                return
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: self.x}
            out = [sess.get_outputs()[0].name]
            reps = T if method == "T x ANN" else 1
            self.fn = lambda: [sess.run(out, feed) for _ in range(reps)][-1][0]
            return
        import torch
        torch.set_num_threads(threads)
        net = spiking_torch(build_net(kind), thetas, "sj")
        xt = torch.from_numpy(self.x)

        def fn():
            with torch.inference_mode():
                return net(xt.unsqueeze(0).repeat(T, 1, 1, 1, 1)).mean(0).numpy()
        self.fn = fn

    def __call__(self):
        return self.fn()


def time_config(workdir, kind, T, batch, thetas, rounds, threads, methods) -> dict:
    runners = {m: Runner(m, workdir, kind, T, batch, thetas, threads) for m in methods}
    outs = {m: r() for m, r in runners.items()}  # warm-up, and the outputs
    wall = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    for _ in range(rounds):
        for m, r in runners.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            r()
            wall[m].append(time.perf_counter() - start)
            cpu[m].append(time.process_time() - start_cpu)
    ref = outs["scan"]
    # forms that run the linear ops on [N, ...] instead of [T*N, ...] may get other
    # onnxruntime kernels (other float rounding) at large sizes: bit-identity is recorded
    exact = {m: bool(np.array_equal(outs[m], ref)) for m in methods if m in ORT_FORMS}
    diff = {m: float(np.abs(outs[m] - ref).max() / (np.abs(ref).max() + 1e-12))
            for m in methods if m in ORT_FORMS}
    # a threshold tie rounded the other way moves one spike, and random deep nets amplify
    # it (network-unrolled forms, T=32, batch 64: up to 3e-3 here); the report lists them
    assert max(diff.values()) < 5e-2, (kind, T, batch, diff)
    agree = {m: float((outs[m].argmax(-1) == ref.argmax(-1)).mean()) for m in methods
             if m not in ("scan", "T x ANN")}
    return {"ms": {m: float(np.median(v)) * 1e3 for m, v in wall.items()},
            "cpu_ms": {m: float(np.median(v)) * 1e3 for m, v in cpu.items()}, "agree": agree,
            "exact": exact, "rel_diff": diff}


def mem_child(args) -> None:
    workdir, kind, T, batch, method = Path(args[0]), args[1], int(args[2]), int(args[3]), args[4]
    thetas = json.loads((workdir / f"{kind}_thetas.json").read_text())
    r = Runner(method, workdir, kind, T, batch, thetas, 1)
    before = _status("VmRSS")
    r()
    peak = _status("VmHWM")  # ru_maxrss would keep the forking parent's peak
    print(json.dumps({"peak": peak, "growth": peak - before}))


def _status(field: str) -> float:
    """A memory field of /proc/self/status in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def measure_memory(workdir, kind, T, batch, method) -> dict:
    out = subprocess.run([sys.executable, __file__, "--mem-child", str(workdir), kind, str(T),
                          str(batch), method], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile(workdir: Path, kind: str, T: int, batch: int,
            form: str) -> list[tuple[str, float]]:
    """Share of one form's kernel time by op type (onnxruntime profiler)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.enable_profiling = 1, True
    opts.profile_file_prefix = str(workdir / f"prof_{kind}_{form}_{T}")
    sess = ort.InferenceSession(str(workdir / f"{kind}_{form}_T{T}.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((batch, 1, 28, 28), dtype=np.float32)
    for _ in range(3):
        sess.run(None, {sess.get_inputs()[0].name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"]
    total = sum(by_op.values())
    return sorted(((k, v / total) for k, v in by_op.items()), key=lambda kv: -kv[1])


def _fmt_table(rows: list[dict]) -> list[str]:
    cols = [m for m in METHODS if m != "T x ANN"]
    lines = ["| net | T | batch | threads | T x ANN | " + " | ".join(cols) +
             " | best form | best / (T x ANN) | SJ / best | net / (T x ANN) | "
             "CPU time: net / (T x ANN) | CPU time: SJ / net | CPU time: netplain / net |",
             "|---|---|---|---|---|" + "---|" * len(cols) + "---|---|---|---|---|---|---|"]
    for r in rows:
        ms, cpu = r["ms"], r["cpu_ms"]
        best = min((m for m in ORT_FORMS if m in ms), key=lambda m: ms[m])
        sj = f"{ms['sj'] / ms[best]:.2f}" if "sj" in ms else "-"
        cells = " | ".join(f"{ms[m]:.1f}" if m in ms else "-" for m in cols)
        cpu_sj = f"{cpu['sj'] / cpu['net']:.2f}" if "sj" in cpu else "-"
        cpu_plain = f"{cpu['netplain'] / cpu['net']:.2f}" if "netplain" in cpu else "-"
        lines.append(f"| {r['kind']} | {r['T']} | {r['batch']} | {r['threads']} | "
                     f"{ms['T x ANN']:.1f} | {cells} | {best} | {ms[best] / ms['T x ANN']:.2f} "
                     f"| {sj} | {ms['net'] / ms['T x ANN']:.2f} | "
                     f"{cpu['net'] / cpu['T x ANN']:.2f} | {cpu_sj} | {cpu_plain} |")
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--mem-child":
        mem_child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer configs and rounds (smoke run)")
    p.add_argument("--threads", default="1,2", help="thread counts to measure")
    p.add_argument("--out", default=str(HERE / "results" / "runtime.md"))
    p.add_argument("--kinds", default="vgg,resnet", help="networks to measure")
    p.add_argument("--mem-methods", default=None,
                   help="methods whose peak memory is measured (default: all)")
    p.add_argument("--Ts", default=None, help="time steps (default 4,8,32; --quick 4,8)")
    p.add_argument("--rounds", type=int, default=None,
                   help="timing rounds per config (default: 7, 3 at T x batch >= 256, 2 at "
                        ">= 2048; --quick 3)")
    p.add_argument("--methods", default=None,
                   help="methods to time (default: all; scan, net and 'T x ANN' always run)")
    args = p.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    try:
        import spikingjelly  # noqa: F401
        methods = METHODS
    except ImportError:
        methods = [m for m in METHODS if m != "sj"]
    if args.methods:
        keep = {*args.methods.split(","), "scan", "net", "T x ANN"}
        methods = [m for m in methods if m in keep]
    Ts = [int(t) for t in args.Ts.split(",")] if args.Ts else [4, 8] if args.quick \
        else [4, 8, 32]
    kinds, batches = args.kinds.split(","), [1, 64]
    threads = [int(t) for t in args.threads.split(",")]
    mem_methods = [m for m in methods if args.mem_methods is None
                   or m in args.mem_methods.split(",")]
    start = time.time()
    load_start = os.getloadavg()[0]
    rows, mem_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        thetas = {}
        for kind in kinds:
            thetas[kind] = prepare(workdir, kind, Ts)["thetas"]
            (workdir / f"{kind}_thetas.json").write_text(json.dumps(thetas[kind]))
        for kind in kinds:
            for T in Ts:
                for batch in batches:
                    for th in threads:
                        cost = T * batch
                        rounds = args.rounds or (3 if args.quick else (
                            2 if cost >= 2048 else 3 if cost >= 256 else 7))
                        # at 2 threads: the multi-step forms against the ANN (time budget)
                        ms = methods if th == 1 else [m for m in methods if m in
                                                      ("scan", "net", "netplain", "T x ANN")]
                        r = time_config(workdir, kind, T, batch, thetas[kind], rounds, th, ms)
                        r.update(kind=kind, T=T, batch=batch, rounds=rounds, threads=th)
                        rows.append(r)
                        logging.warning("%s T=%d batch=%d threads=%d: wall %s cpu %s", kind, T,
                                        batch, th, {k: round(v, 1) for k, v in r["ms"].items()},
                                        {k: round(v, 1) for k, v in r["cpu_ms"].items()})
            for T in Ts[1:]:
                mem = {m: measure_memory(workdir, kind, T, 64, m) for m in mem_methods}
                mem_rows.append({"kind": kind, "T": T, "mem": mem})
                logging.warning("%s T=%d memory %s", kind, T, mem)
        prof_T = 8 if 8 in Ts else Ts[-1]  # the forms are written only for the Ts measured
        prof = {(kind, form): profile(workdir, kind, prof_T, 64, form) for kind in kinds
                for form in ("scan", "netplain", "net")}
    write_report(Path(args.out), rows, mem_rows, prof, time.time() - start, args.quick,
                 methods, load_start, mem_methods, prof_T)


def _exactness(row: dict, method: str) -> str:
    if row["exact"][method]:
        return f"{method} exact"
    return f"{method} {row['rel_diff'][method]:.1e} (agree {row['agree'][method]:.3f})"


def write_report(path: Path, rows, mem_rows, prof, seconds: float, quick: bool,
                 methods: list[str], load_start: float = float("nan"),
                 mem_methods: list[str] | None = None, prof_T: int = 8) -> None:
    mem_methods = mem_methods or methods
    import onnxruntime
    import torch
    try:
        import spikingjelly
        sj = getattr(spikingjelly, "__version__", "installed")
    except ImportError:
        sj = "missing"
    lines = [
        "# Runtime benchmark", "",
        f"Command: `python benchmarks/runtime.py{''.join(' ' + a for a in sys.argv[1:])}` "
        f"({seconds / 60:.1f} min)  ",
        f"Date: {datetime.date.today()}  ",
        f"Machine: 2-core shared CPU ({platform.processor() or platform.machine()}), no GPU; "
        f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, spikingjelly {sj}, "
        f"Python {platform.python_version()}; load average (1 min) at the start "
        f"{load_start:.1f}, at the end {os.getloadavg()[0]:.1f}.  ",
        "Timing: median of interleaved rounds (each round runs every method once, after a "
        "warm-up run), milliseconds (wall clock) per full inference of T steps; every "
        "onnxruntime form's logits are compared with the Scan model's (listed below). "
        "`CPU time`: ratios of median process CPU times (all threads of the process; less "
        "disturbed by other processes on a shared machine than wall clock). "
        "Networks: 28x28x1 input, random weights, thresholds calibrated on uniform noise "
        "(VGG-like: 4 conv + 2 max pools + 2 FC; ResNet-like: stem + 3 residual blocks, one "
        "strided, GAP + FC).", "", "## Time (ms)", ""] + _fmt_table(rows)
    if "sj" in methods:
        lines += ["", "Agreement of SJ's predicted class with the onnxruntime SNN (same SNN; "
                  "SJ's float ops differ in order, x/theta then threshold 1):", ""]
        lines += [f"- {r['kind']} T={r['T']} b={r['batch']} threads={r['threads']}: "
                  f"{r['agree'].get('sj', float('nan')):.3f}" for r in rows if "sj" in r["agree"]]
    lines += ["", "Bit-identical logits to the Scan model (else: max relative difference, "
              "and predicted-class agreement):", ""]
    lines += [f"- {r['kind']} T={r['T']} b={r['batch']} threads={r['threads']}: "
              + ", ".join(_exactness(r, m) for m in r["rel_diff"] if m != "scan") for r in rows]
    lines += ["", "## Peak memory, batch 64, 1 thread (MiB; subprocess per config)", "",
              "Peak = VmHWM (peak RSS) of the whole process (imports included: torch for SJ); "
              "growth = peak minus the RSS after loading the model.", "",
              "| net | T | " + " | ".join(f"{m} peak / growth" for m in mem_methods) + " |",
              "|---|---|" + "---|" * len(mem_methods)]
    for r in mem_rows:
        m = r["mem"]
        lines.append(f"| {r['kind']} | {r['T']} | " + " | ".join(
            f"{m[k]['peak']:.0f} / {m[k]['growth']:.0f}" for k in mem_methods) + " |")
    lines += ["", f"## onnxruntime profile (T={prof_T}, batch 64, 1 thread), kernel time share "
              "by op (Conv includes the blocked IF step's depthwise 1x1 convs)",
              ""]
    for (kind, form), shares in prof.items():
        lines.append(f"- {kind} {form}: " + ", ".join(f"{op} {s:.1%}" for op, s in shares[:10]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"rows": rows, "memory": mem_rows}, indent=1))


if __name__ == "__main__":
    main()
