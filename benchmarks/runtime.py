"""Runtime benchmark: multi-step and streaming SNNs in onnxruntime vs SpikingJelly and torch.

    python benchmarks/runtime.py [--quick] [--out benchmarks/results/runtime.md]

Everything runs on 1 thread (onnxruntime intra_op=1, torch.set_num_threads(1)). For each
network (VGG-like, ResNet-like; 28x28x1 input, random weights, thresholds calibrated on
uniform noise), T and batch, the methods run interleaved (one run of each per round) and
the median over rounds is reported:

* ``ort multi``  the multi-step SNN of ``convert`` (one session run for all T steps),
* ``ort stream`` the streaming SNN (T session runs, states fed back),
* ``sj``         SpikingJelly multi-step (IFNode(v_reset=None, step_mode='m'), ann2snn-style
  threshold scaling, input repeated T times, layers on [T*N, ...] via SeqToANNContainer),
* ``torch loop`` plain torch, a Python loop over T steps,
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
METHODS = ["ort multi", "ort stream", "sj", "torch loop", "T x ANN"]


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
    """Export the ANN, convert, write ANN/SNN/streaming models; returns paths and thetas."""
    import onnx

    from onnx_rmpe.convert import convert, qcfs_to_snn
    from onnx_rmpe.runtime.streaming import snn_to_streaming
    sys.path.insert(0, str(HERE.parent))
    from tests.helpers import export_torch
    x = np.random.default_rng(0).random((256, 1, 28, 28), dtype=np.float32)
    ann = export_torch(build_net(kind), x)
    onnx.save(ann, str(workdir / f"{kind}_ann.onnx"))
    res = convert(ann, T=Ts[0], calib=x)
    thetas = [float(onnx.numpy_helper.to_array(i)) for n in res.snn.graph.node
              if n.op_type == "IFNeuron" for i in res.snn.graph.initializer if i.name == n.input[1]]
    for T in Ts:
        snn = qcfs_to_snn(res.qcfs, T=T)
        onnx.save(snn, str(workdir / f"{kind}_snn_T{T}.onnx"))
        onnx.save(snn_to_streaming(snn), str(workdir / f"{kind}_stream_T{T}.onnx"))
    return {"thetas": thetas}


class Runner:
    """Loads one method for one config; ``__call__`` runs it once."""

    def __init__(self, method: str, workdir: Path, kind: str, T: int, batch: int,
                 thetas: list[float]) -> None:
        self.x = np.random.default_rng(1).random((batch, 1, 28, 28), dtype=np.float32)
        self.T = T
        if method.startswith("ort") or method == "T x ANN":
            import onnxruntime as ort
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
            name = {"ort multi": "snn", "ort stream": "stream", "T x ANN": "ann"}[method]
            path = workdir / (f"{kind}_ann.onnx" if name == "ann" else f"{kind}_{name}_T{T}.onnx")
            if method == "ort stream":
                import onnx

                from onnx_rmpe.runtime.streaming import StreamingRunner
                runner = StreamingRunner(onnx.load(str(path)), threads=1)
                self.fn = lambda: runner.run(self.x, T)[-1]
            else:
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                feed = {sess.get_inputs()[0].name: self.x}
                out = [sess.get_outputs()[0].name]
                reps = T if method == "T x ANN" else 1
                self.fn = lambda: [sess.run(out, feed) for _ in range(reps)][-1][0]
            return
        import torch
        torch.set_num_threads(1)
        net = spiking_torch(build_net(kind), thetas, "sj" if method == "sj" else "plain")
        xt = torch.from_numpy(self.x)
        if method == "sj":
            def fn():
                with torch.inference_mode():
                    return net(xt.unsqueeze(0).repeat(T, 1, 1, 1, 1)).mean(0).numpy()
        else:
            def fn():  # the loop runs each step through the whole network
                with torch.inference_mode():
                    return loop_forward(net, xt, T).numpy()
        self.fn = fn

    def __call__(self):
        return self.fn()


def loop_forward(net, x, T: int):
    """Plain torch: for t in 1..T, the network on one step ([1, N, ...] per layer)."""
    import torch
    ifs = [m for m in net.modules() if type(m).__name__ == "PlainIF"]
    pools = [m for m in net.modules() if type(m).__name__ == "CumPool"]
    state = {id(m): torch.full((), 0.5 * m.theta) for m in ifs}
    sums = {id(m): 0.0 for m in pools}
    prev = {id(m): 0.0 for m in pools}

    def if_step(m, inp, _out):
        v = state[id(m)] + inp[0][0]
        s = (v >= m.theta).to(v.dtype) * m.theta
        state[id(m)] = v - s
        return s[None]

    def pool_step(m, inp, _out):
        sums[id(m)] = sums[id(m)] + inp[0][0]
        c = m.pool(sums[id(m)])
        d, prev[id(m)] = c - prev[id(m)], c
        return d[None]
    # replace the multi-step forward of IF / pool modules by a one-step one
    for m in ifs:
        m.forward_orig, m.forward = m.forward, (lambda x, m=m: if_step(m, (x,), None))
    for m in pools:
        m.forward_orig, m.forward = m.forward, (lambda x, m=m: pool_step(m, (x,), None))
    try:
        total = 0
        for _ in range(T):
            total = total + net(x[None])[0]
        return total / T
    finally:
        for m in ifs + pools:
            m.forward = m.forward_orig


def time_config(workdir, kind, T, batch, thetas, rounds) -> dict:
    runners = {m: Runner(m, workdir, kind, T, batch, thetas) for m in METHODS}
    outs = {m: r() for m, r in runners.items()}  # warm-up, and the outputs
    times = {m: [] for m in METHODS}
    for _ in range(rounds):
        for m, r in runners.items():
            start = time.perf_counter()
            r()
            times[m].append(time.perf_counter() - start)
    med = {m: float(np.median(v)) * 1e3 for m, v in times.items()}
    ref = outs["ort multi"]
    agree = {m: float((outs[m].argmax(-1) == ref.argmax(-1)).mean())
             for m in ("sj", "torch loop", "ort stream")}
    return {"ms": med, "agree": agree}


def mem_child(args) -> None:
    workdir, kind, T, batch, method = Path(args[0]), args[1], int(args[2]), int(args[3]), args[4]
    thetas = json.loads((workdir / f"{kind}_thetas.json").read_text())
    r = Runner(method, workdir, kind, T, batch, thetas)
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


def profile(workdir: Path, kind: str, T: int, batch: int) -> list[tuple[str, float]]:
    """Share of the multi-step run's kernel time by op type (onnxruntime profiler)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.enable_profiling = 1, True
    opts.profile_file_prefix = str(workdir / f"prof_{kind}_{T}")
    sess = ort.InferenceSession(str(workdir / f"{kind}_snn_T{T}.onnx"), opts,
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
    lines = ["| net | T | batch | ort multi | ort stream | SJ | torch loop | T x ANN | "
             "multi / (T x ANN) | SJ / multi | stream / multi |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms"]
        lines.append(
            f"| {r['kind']} | {r['T']} | {r['batch']} | {ms['ort multi']:.1f} | "
            f"{ms['ort stream']:.1f} | {ms['sj']:.1f} | {ms['torch loop']:.1f} | "
            f"{ms['T x ANN']:.1f} | {ms['ort multi'] / ms['T x ANN']:.2f} | "
            f"{ms['sj'] / ms['ort multi']:.2f} | {ms['ort stream'] / ms['ort multi']:.2f} |")
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--mem-child":
        mem_child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer configs and rounds (smoke run)")
    p.add_argument("--out", default=str(HERE / "results" / "runtime.md"))
    args = p.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    Ts = [4, 8] if args.quick else [4, 8, 32]
    kinds, batches = ["vgg", "resnet"], [1, 64]
    start = time.time()
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
                    cost = T * batch
                    rounds = 3 if args.quick else (5 if cost >= 2048 else 9 if cost >= 256 else 21)
                    r = time_config(workdir, kind, T, batch, thetas[kind], rounds)
                    r.update(kind=kind, T=T, batch=batch, rounds=rounds)
                    rows.append(r)
                    logging.warning("%s T=%d batch=%d: %s agree=%s", kind, T, batch,
                                    {k: round(v, 1) for k, v in r["ms"].items()}, r["agree"])
            for T in Ts:
                mem = {m: measure_memory(workdir, kind, T, 64, m)
                       for m in ("ort multi", "ort stream", "T x ANN", "sj")}
                mem_rows.append({"kind": kind, "T": T, "mem": mem})
                logging.warning("%s T=%d memory %s", kind, T, mem)
        prof = {kind: profile(workdir, kind, 8, 64) for kind in kinds}
    write_report(Path(args.out), rows, mem_rows, prof, time.time() - start, args.quick)


def write_report(path: Path, rows, mem_rows, prof, seconds: float, quick: bool) -> None:
    import onnxruntime
    import torch
    try:
        import spikingjelly
        sj = getattr(spikingjelly, "__version__", "installed")
    except ImportError:
        sj = "missing"
    lines = [
        "# Runtime benchmark", "",
        f"Command: `python benchmarks/runtime.py{' --quick' if quick else ''}` "
        f"({seconds / 60:.1f} min)  ",
        f"Date: {datetime.date.today()}  ",
        f"Machine: 2-core shared CPU ({platform.processor() or platform.machine()}), "
        f"1 thread for every method; onnxruntime {onnxruntime.__version__}, torch "
        f"{torch.__version__}, spikingjelly {sj}, Python {platform.python_version()}.  ",
        "Timing: median of interleaved rounds (each round runs every method once, after a "
        "warm-up run), milliseconds per full inference of T steps. Networks: 28x28x1 input, "
        "random weights, thresholds calibrated on uniform noise (VGG-like: 4 conv + 2 "
        "max pools + 2 FC; ResNet-like: stem + 3 residual blocks, one strided, GAP + FC).",
        "", "## Time (ms)", ""] + _fmt_table(rows) + [
        "", "Agreement of the predicted class with ort multi (same SNN; SJ's float ops "
        "differ in order, x/theta then threshold 1):", ""]
    for r in rows:
        lines.append(f"- {r['kind']} T={r['T']} b={r['batch']}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in r["agree"].items()))
    lines += ["", "## Peak memory, batch 64 (MiB; subprocess per config)", "",
              "Peak = VmHWM (peak RSS) of the whole process (imports included: torch for SJ); "
              "growth = peak minus the RSS after loading the model.", "",
              "| net | T | multi peak | multi growth | stream peak | stream growth | "
              "T x ANN peak | SJ peak | SJ growth | multi/stream growth |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in mem_rows:
        m = r["mem"]
        lines.append(
            f"| {r['kind']} | {r['T']} | {m['ort multi']['peak']:.0f} | "
            f"{m['ort multi']['growth']:.0f} | {m['ort stream']['peak']:.0f} | "
            f"{m['ort stream']['growth']:.0f} | {m['T x ANN']['peak']:.0f} | "
            f"{m['sj']['peak']:.0f} | {m['sj']['growth']:.0f} | "
            f"{m['ort multi']['growth'] / max(m['ort stream']['growth'], 1):.1f} |")
    lines += ["", "## onnxruntime profile of the multi-step SNN (T=8, batch 64), kernel time "
              "share by op", ""]
    for kind, shares in prof.items():
        lines.append(f"- {kind}: " + ", ".join(f"{op} {s:.1%}" for op, s in shares[:10]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
