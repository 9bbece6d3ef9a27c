"""Stage-1 QCFS fine-tuning of a fully trained Fashion-MNIST ReLU net (issue 11, goal 3).

Reads the ground-truth ReLU ANN cached by ``benchmarks/fashion_nets.py``
(``~/.cache/onnx-rmpe-bench/vgg_bn_avg.onnx``: VGG-like, BN, AvgPool, input
``[N, 1, 28, 28]`` = pixels / 255), fine-tunes its QCFS version (L=4) with
:func:`onnx_rmpe.finetune.finetune` under each recipe below, converts each result with
the default :func:`onnx_rmpe.conversion.convert` (RMPE calibrated for each T on the first
512 training images of the budget) and reports the test accuracy on the full 10k test
set of the ReLU ANN, the post-training QCFS ANN, the fine-tuned QCFS ANN and the SNN
(first output, onnxruntime) at T = 1, 2, 4, 8, 16.

Recipes (``--variants``, run in this order):

- ``old-1x10k``: the recipe before issue 11 (Adam lr 1e-3, constant, batch 64, labels);
- ``default-1x10k``: the defaults (SGD momentum 0.9, lr 0.01, cosine, batch 128, labels);
- ``distil-1x10k``: the defaults on the same images without labels (pure distillation);
- ``default-3x60k``: the defaults, three epochs on all 60 000 training images.

"1x10k" is one epoch on a seeded random subset of 10 000 training images. Each finished
recipe is appended to ``--json`` at once, so a long run that is stopped keeps what it
measured; ``--report-only`` rewrites the markdown from that file.

Usage::

    python benchmarks/finetune_fashion.py [--model PATH] [--variants a,b] [--steps 1,2,4,8,16]
        [--json benchmarks/results/finetune_fashion.json]
        [--out benchmarks/results/finetune_fashion.md]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from onnx_rmpe.conversion import build_qcfs, convert
from onnx_rmpe.data import Dataset
from onnx_rmpe.finetune import finetune
from onnx_rmpe.finetune_snn import finetune_snn

sys.path.insert(0, str(Path(__file__).parent))
from finetune_reference import reference_finetune  # noqa: E402

CACHE = Path(os.environ.get("ONNX_RMPE_BENCH_CACHE", Path.home() / ".cache/onnx-rmpe-bench"))
LEVELS = 4
CALIB = 512
REF = None  # benchmarks/finetune_reference.py
SNN = {}  # the default recipe, then finetune_snn for each T <= SNN_MAX_T
SNN_PTQ = {"ptq": True}  # no QCFS fine-tuning: default convert of the ReLU net, then finetune_snn
SNN_STEPS = 200
SNN_MAX_T = int(os.environ.get("FINETUNE_SNN_MAX_T", 2))  # the stage is meant for T <= 2
#: part of the cache key of fine-tuned models: bump it when the training code changes
#: ("bu": Bu et al.'s clipped straight-through gradient, onnx_rmpe/torch/qcfs.py)
CODE_STAMP = "bu"
OLD = dict(optimizer="adam", lr=1e-3, schedule="constant", batch_size=64, distill=0.0)
#: name -> (description, finetune keyword arguments, training images, epochs, labels)
VARIANTS = {
    "reference-1x10k": ("reference: issue's independent recipe (plain torch)", REF, 10_000, 1,
                        True),
    "reference-3x60k": ("reference: issue's independent recipe (plain torch)", REF, 60_000, 3,
                        True),
    "old-1x10k": ("old recipe: Adam 1e-3, constant, batch 64", OLD, 10_000, 1, True),
    "default-1x10k": ("default: SGD 0.9, lr 0.01, cosine, batch 128", {}, 10_000, 1, True),
    "distil-1x10k": ("default, no labels (distillation)", {}, 10_000, 1, False),
    "snn-1x10k": (f"default + SNN-level stage (finetune_snn: {SNN_STEPS} steps, batch 64, "
                  "theta and v_init, distillation) at T <= 2", SNN, 10_000, 1, True),
    "snn-ptq-1x10k": (f"no QCFS fine-tuning: default convert (L=8, thresholds searched for T) "
                      f"of the ReLU net + SNN-level stage "
                      f"({SNN_STEPS} steps, batch 64, theta and v_init, distillation)", SNN_PTQ,
                      10_000, 0, False),
    "snn-3x60k": (f"default 3 x 60k + SNN-level stage (finetune_snn: {SNN_STEPS} steps, "
                  "batch 64, theta and v_init, distillation)", SNN, 60_000, 3, True),
    "default-1x60k": ("default: SGD 0.9, lr 0.01, cosine, batch 128", {}, 60_000, 1, True),
    "default-3x60k": ("default: SGD 0.9, lr 0.01, cosine, batch 128", {}, 60_000, 3, True),
}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    s = session(model)
    name, out = s.get_inputs()[0].name, s.get_outputs()[0].name
    pred = np.concatenate([s.run([out], {name: x[i:i + batch]})[0].argmax(-1)
                           for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def load(path: str):
    with np.load(path) as d:
        scale = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)  # noqa: E731
        return (scale(d["x_train"]), d["y_train"].astype(np.int64), scale(d["x_test"]),
                d["y_test"].astype(np.int64))


def snn_curve(qcfs: onnx.ModelProto, calib: np.ndarray, x, y, steps, on_point) -> None:
    """Default ``convert`` (RMPE on) of a fine-tuned QCFS model for each T."""
    for T in steps:
        snn = convert(qcfs, T=T, calib=calib, calib_samples=CALIB, threads=1).snn
        acc = accuracy(snn, x, y)
        print(f"  T={T}: {100 * acc:.2f}", flush=True)
        on_point(T, acc)


def run_variant(name: str, relu: onnx.ModelProto, data, steps, seed: int, save) -> None:
    """Fine-tune and measure one recipe; ``save(record)`` after each measured point."""
    desc, kwargs, n, epochs, labels = VARIANTS[name]
    xtr, ytr, xte, yte = data
    idx = np.random.default_rng(seed).permutation(len(xtr))[:n]
    train = (xtr[idx], ytr[idx]) if labels else xtr[idx]
    start = time.perf_counter()
    base = name.replace("snn-", "default-") if kwargs is SNN else name
    cached = CACHE / f"ft_{hashlib.sha1(relu.SerializeToString()).hexdigest()[:10]}_{base}" \
                     f"_s{seed}_{CODE_STAMP}.onnx"
    if kwargs is SNN_PTQ:  # convert() calibrates (threshold search for T, RMPE) from the ReLU
        qcfs = relu
        cached = CACHE / "none"
    elif cached.exists():  # fine-tuned QCFS models are cached (seconds: of that first run)
        qcfs = onnx.load(str(cached))
    elif kwargs is REF:
        exported = reference_finetune(relu, xtr[idx], ytr[idx], levels=LEVELS, epochs=epochs,
                                      seed=seed)
        qcfs = build_qcfs(exported, None, levels=LEVELS)[0]  # adds the QCFS function
    else:
        qcfs = finetune(relu, train, levels=LEVELS, epochs=epochs, seed=seed, progress=False,
                        **kwargs).model
    seconds_file = cached.with_suffix(".seconds")
    if not cached.exists() and kwargs is not SNN_PTQ:
        onnx.save(qcfs, str(cached))
        seconds_file.write_text(str(time.perf_counter() - start))
    distill = 1.0 if not labels else 0.0
    seconds = float(seconds_file.read_text()) if seconds_file.exists() else \
        0.0 if kwargs is SNN_PTQ else float("nan")
    rec = dict(name=name, description=desc, samples=n, epochs=epochs, labels=labels,
               seconds=seconds, distill=distill, snn={},
               qcfs=accuracy(build_qcfs(qcfs, Dataset(xtr[idx][:1024]))[0]  # convert's L=8
                             if kwargs is SNN_PTQ else qcfs, xte, yte),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               load=os.getloadavg()[0])
    print(f"{name}: QCFS {100 * rec['qcfs']:.2f} ({seconds:.0f}s)", flush=True)
    save(rec)

    def on_point(T: int, acc: float) -> None:
        rec["snn"][str(T)] = acc
        save(rec)

    if kwargs is SNN or kwargs is SNN_PTQ:
        snn_stage_curve(qcfs, relu, xtr[idx], xte, yte, [t for t in steps if t <= SNN_MAX_T],
                        rec, save)
    else:
        snn_curve(qcfs, xtr[idx], xte, yte, steps, on_point)


def snn_stage_curve(qcfs, relu, xtrain, x, y, steps, rec: dict, save) -> None:
    """Default ``convert``, then :func:`finetune_snn` on the budget's images (no labels)."""
    rec.setdefault("snn_before", {})
    rec.setdefault("snn_seconds", {})
    for T in steps:
        snn = convert(qcfs, T=T, calib=xtrain, calib_samples=CALIB, threads=1).snn
        rec["snn_before"][str(T)] = accuracy(snn, x, y)
        start = time.perf_counter()
        tuned = finetune_snn(snn, xtrain, teacher=relu, steps=SNN_STEPS, seed=0)
        rec["snn_seconds"][str(T)] = time.perf_counter() - start
        rec["snn"][str(T)] = accuracy(tuned.model, x, y)
        print(f"  T={T}: {100 * rec['snn_before'][str(T)]:.2f} -> {100 * rec['snn'][str(T)]:.2f}"
              f" (SNN stage {rec['snn_seconds'][str(T)]:.0f}s, loss {tuned.loss_before:.3f} -> "
              f"{tuned.loss_after:.3f})", flush=True)
        save(rec)


def baseline(relu: onnx.ModelProto, data, seed: int) -> dict:
    xtr, _, xte, yte = data
    idx = np.random.default_rng(seed).permutation(len(xtr))[:10_000]
    ptq, _ = build_qcfs(relu, Dataset(xtr[idx][:1024]), levels=LEVELS)
    return dict(name="baseline", relu=accuracy(relu, xte, yte), ptq=accuracy(ptq, xte, yte))


def report(records: list[dict], args) -> str:
    lines = [
        "# QCFS fine-tuning (stage 1) on fully trained Fashion-MNIST nets", "",
        f"- command: `python benchmarks/finetune_fashion.py --model MODEL --variants "
        f"{args.variants} --steps {args.steps}` (one run per MODEL)",
        f"- machine: 2-core shared CPU ({platform.machine()}), no GPU; torch {torch.__version__}"
        f" (1 thread), onnxruntime {ort.__version__} (1 thread); the machine was shared with "
        "other jobs (load average in the last column), so seconds are upper bounds",
        f"- L={LEVELS}; test accuracy (%) on the full 10 000-image Fashion-MNIST test set; SNN "
        f"= default `convert` of the fine-tuned model (RMPE calibrated for each T on {CALIB} "
        "training images of the budget), first output; '-' = not measured", ""]
    for model in dict.fromkeys(r.get("model", "?") for r in records):
        mine = [r for r in records if r.get("model", "?") == model]
        lines += _table(model, mine)
    return "\n".join(lines)


def _table(model: str, records: list[dict]) -> list[str]:
    base = next((r for r in records if r["name"] == "baseline"), None)
    rows = [r for r in records if r["name"] != "baseline"]
    steps = sorted({int(t) for r in rows for t in r["snn"]})
    lines = [f"## {model}", ""]
    if base:
        lines += [f"ReLU ANN {100 * base['relu']:.2f} %, post-training QCFS (L={LEVELS}, 99.9th "
                  f"percentile) {100 * base['ptq']:.2f} %.", ""]
    head = ("| recipe | data | QCFS ANN | " + " | ".join(f"SNN T={t}" for t in steps)
            + " | fine-tune s | load |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        data = f"{r['epochs']} ep x {r['samples'] // 1000}k" + ("" if r["labels"] else
                                                                 ", no labels")
        cells = " | ".join(_cell(r, str(t)) for t in steps)
        lines.append(f"| {r['description']} | {data} | {100 * r['qcfs']:.2f} | {cells} | "
                     f"{r['seconds']:.0f} | {r['load']:.1f} |")
    return lines + [""]


def _cell(r: dict, t: str) -> str:
    """``after`` or, for the SNN-level stage, ``before -> after`` (default convert first)."""
    if t not in r["snn"]:
        return "-"
    before = r.get("snn_before", {}).get(t)
    return (f"{100 * before:.2f} -> " if before is not None else "") + f"{100 * r['snn'][t]:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(CACHE / "vgg_bn_avg.onnx"))
    p.add_argument("--data", default="/work/shared/data/fashion_mnist.npz")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", default="1,2,4,8,16")
    p.add_argument("--test-samples", type=int, default=10_000, help="(smoke runs only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="benchmarks/results/finetune_fashion.json")
    p.add_argument("--out", default="benchmarks/results/finetune_fashion.md")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    store = Path(args.json)
    records = json.loads(store.read_text()) if store.exists() else []
    if not args.report_only:
        relu, model = onnx.load(args.model), Path(args.model).stem
        xtr, ytr, xte, yte = load(args.data)
        data = (xtr, ytr, xte[:args.test_samples], yte[:args.test_samples])
        steps = [int(t) for t in args.steps.split(",")]
        todo = ["baseline", *args.variants.split(",")]

        def save(rec: dict) -> None:
            nonlocal records
            rec["model"] = model
            records = [r for r in records
                       if (r["name"], r.get("model")) != (rec["name"], model)] + [rec]
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(records, indent=1))

        for name in todo:
            if name == "baseline":
                save(baseline(relu, data, args.seed))
            else:
                run_variant(name, relu, data, steps, args.seed, save)
    text = report(records, args)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
