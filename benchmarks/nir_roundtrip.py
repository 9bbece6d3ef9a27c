"""NIR round trip on Fashion-MNIST (issue 13): the exported file, imported by SNN libraries.

Trains (or loads from ``~/.cache/onnx-rmpe-bench``) the ResNet-like CNN of
``rmpe_fashion.py`` with the input normalization inside the model, and an MLP, converts
each to an RMPE-calibrated SNN (T = 4, L = 8, 512 calibration images), exports it with
``onnx_rmpe.export_nir`` and runs the NIR file in snnTorch 1.0.0, sinabs 3.1.3 and Norse
1.1.0 for T steps on test images. Reports, against the onnxruntime SNN: accuracy,
agreement of the predicted class, the largest per-layer fraction of differing spikes
and the largest difference of the averaged outputs.

Library settings ("as imported" vs. "NIR IF"): snnTorch needs ``beta=1`` and
``init_hidden=True`` after import (its IF import is a leaky neuron returning a tuple;
snntorch#416); sinabs' ``IAFSqueeze`` gets ``SingleSpike`` and no lower bound (NIR's IF has
neither multi-spike nor ``v >= -theta``) and is wired with ``nirtorch.nir_to_torch``
(``sinabs.from_nir`` runs joins before their inputs); Norse resets to zero, as NIR defines
IF, so it is reported as imported.

Usage::

    python benchmarks/nir_roundtrip.py [--samples 1000] [--epochs 5] [--train 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import nir
import nirtorch
import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rmpe_fashion import export, resnet_like, train  # noqa: E402

from onnx_rmpe import convert, export_nir  # noqa: E402
from onnx_rmpe.nir_walk import safe_name  # noqa: E402
from tests.helpers import run  # noqa: E402

CACHE = Path.home() / ".cache" / "onnx-rmpe-bench"
T = 4
MEAN, STD = 0.286, 0.353


class Normalized(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body((x - MEAN) / STD)


def mlp() -> nn.Module:
    return Normalized(nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(),
                                    nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)))


def onnx_run(model: onnx.ModelProto, x: np.ndarray):
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    ifs = [n for n in probe.graph.node if n.op_type == "IFNeuron"]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n.output[0]) for n in ifs)
    outs = run(probe, x)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in probe.graph.initializer}
    spikes = {safe_name(n.name).replace(".", "_"): (v / inits[n.input[1]]).reshape(T, len(x), -1)
              for n, v in zip(ifs, outs[2:])}
    return outs[1][-1], spikes


def _hook(net, classes) -> dict[str, list]:
    rec: dict[str, list] = {}
    for key, mod in net.named_modules():
        if type(mod).__name__ in classes and not key.startswith("clock"):
            rec[key] = []
            mod.register_forward_hook(lambda m, i, o, key=key: rec[key].append(
                (o[0] if isinstance(o, tuple) else o).detach().numpy().reshape(-1).copy()))
    return rec


def run_sinabs(graph, x: np.ndarray, nir_if: bool):
    import sinabs.layers as sl
    from sinabs.activation import SingleSpike
    from sinabs.nir import _import_sinabs_module
    make = partial(_import_sinabs_module, batch_size=len(x), num_timesteps=T)
    net = nirtorch.nir_to_torch(graph, {k: make for k in (
        nir.IF, nir.Conv2d, nir.Affine, nir.SumPool2d, nir.Flatten, nir.Input, nir.Output)})
    for mod in net.modules():
        if isinstance(mod, sl.IAFSqueeze) and nir_if:
            mod.spike_fn, mod.min_v_mem = SingleSpike, None
    rec = _hook(net, ("IAFSqueeze",))
    with torch.no_grad():
        out = net(torch.from_numpy(np.repeat(x, T, axis=0)))
    out = (out[0] if isinstance(out, tuple) else out).numpy().reshape(len(x), T, -1)
    spikes = {k: v[0].reshape(len(x), T, -1).swapaxes(0, 1) for k, v in rec.items()}
    return out.mean(1), spikes


def _per_sample(net, x: np.ndarray, rec: dict, reset, stateful: bool):
    outs = []
    with torch.no_grad():
        for sample in x:
            reset()
            state = None
            for _ in range(T):
                res = net(torch.from_numpy(sample)) if not stateful or state is None else \
                    net(torch.from_numpy(sample), state)
                out, state = res if isinstance(res, tuple) else (res, None)
                outs.append(out.numpy().reshape(-1))
    out = np.stack(outs).reshape(len(x), T, -1)
    spikes = {k: np.stack(v).reshape(len(x), T, -1).swapaxes(0, 1) for k, v in rec.items()}
    return out.mean(1), spikes


def run_snntorch(graph, x: np.ndarray):
    import snntorch
    from snntorch.import_nir import import_from_nir
    net = import_from_nir(graph)
    leaky = [m for m in net.modules() if isinstance(m, snntorch.Leaky)]
    for mod in leaky:
        mod.beta, mod.init_hidden = torch.tensor(1.0), True
    rec = _hook(net, ("Leaky",))
    return _per_sample(net, x, rec, lambda: [m.reset_mem() for m in leaky], stateful=False)


def run_norse(graph, x: np.ndarray):
    from norse.torch.utils.import_nir import _import_norse_module
    make = partial(_import_norse_module, ignore_warnings=True)
    net = nirtorch.nir_to_torch(graph, {k: make for k in (
        nir.IF, nir.Conv2d, nir.Affine, nir.SumPool2d, nir.Flatten)})
    rec = _hook(net, ("IAFCell",))
    return _per_sample(net, x, rec, lambda: None, stateful=True)


def compare(name, lib_out, lib_spikes, want_out, want_spikes, y) -> str:
    worst = max(float(np.mean(lib_spikes[k] != want_spikes[k])) for k in want_spikes)
    agree = float(np.mean(lib_out.argmax(-1) == want_out.argmax(-1)))
    acc = float(np.mean(lib_out.argmax(-1) == y))
    diff = float(np.abs(lib_out - want_out).max() / np.abs(want_out).max())
    return f"| {name} | {100 * acc:.1f} | {100 * agree:.1f} | {100 * worst:.3f} | {diff:.1e} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data/fashion_mnist.npz")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train", type=int, default=20000, help="training images used")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    with np.load(args.data) as d:
        scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
        xtr, ytr = scale(d["x_train"][:args.train]), d["y_train"][:args.train].astype(np.int64)
        xte, yte = scale(d["x_test"][:args.samples]), d["y_test"][:args.samples]
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, make in (("ResNet-like CNN (BN, AvgPool, residual Add, normalization)",
                         lambda: Normalized(resnet_like())), ("MLP 784-256-128-10", mlp)):
        path = CACHE / f"nir_{label.split()[0].lower()}_n{args.train}_e{args.epochs}.onnx"
        if not path.exists():
            net, secs = train(make(), xtr, ytr, args.epochs)
            onnx.save(export(net, xte), str(path))
            print(f"trained {label}: {secs:.0f}s", flush=True)
        snn = convert(str(path), T=T, calib=xtr[:512]).snn
        out_path = Path("/tmp") / f"{path.stem}.nir"
        result = export_nir(snn, out_path)
        want_out, want_spikes = onnx_run(snn, xte)
        graph = nir.read(str(out_path))
        acc = float(np.mean(want_out.argmax(-1) == yte))
        rows.append(f"| **{label}**: onnxruntime SNN | {100 * acc:.1f} | 100 | 0 | 0 |")
        print(f"{label}: {len(result.nodes)} NIR nodes, SNN accuracy {acc:.4f}", flush=True)
        for lib, fn in (("sinabs (NIR IF settings)", partial(run_sinabs, nir_if=True)),
                        ("sinabs (as imported)", partial(run_sinabs, nir_if=False)),
                        ("snnTorch (beta=1, init_hidden)", run_snntorch),
                        ("Norse (as imported: reset to 0)", run_norse)):
            lib_out, lib_spikes = fn(graph, xte)
            rows.append(compare(lib, lib_out, lib_spikes, want_out, want_spikes, yte))
            print(rows[-1], flush=True)
    print("\n| model / library | accuracy % | same class as SNN % | worst layer: spikes "
          "differing % | max output diff (rel.) |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(xte)} Fashion-MNIST test images, T={T}, L=8, RMPE (512 calibration images); "
          f"{time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
