"""Fashion-MNIST across frameworks: a MaxPool VGG-like net (PyTorch) and a Keras CNN (tf2onnx).

Prints a markdown table of ANN, QCFS ANN and SNN accuracy at T = 1..64 (uncalibrated:
``convert(..., rmpe=False)``). Usage::

    python benchmarks/frameworks_fashion.py [--train 10000] [--test 1000] [--out FILE]

Training uses a random subsample of the training set (default 10 000 images, 2 epochs)
to keep the run near 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
DATA = "/work/shared/data/fashion_mnist.npz"
STEPS = (1, 2, 4, 8, 16, 32, 64)


def load(n_train: int, n_test: int, seed: int = 0):
    d = np.load(DATA)
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(d["x_train"]))[:n_train]
    x = (d["x_train"][tr] / 255.0).astype(np.float32)[:, None]
    xt = (d["x_test"][:n_test] / 255.0).astype(np.float32)[:, None]
    return (x, d["y_train"][tr].astype(np.int64)), (xt, d["y_test"][:n_test].astype(np.int64))


def torch_vgg(x, y, epochs: int):
    import torch
    from torch import nn

    from onnx_rmpe.torch.export import export
    from tests.helpers import train
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 10))
    train(net, x, y, epochs=epochs, lr=2e-3, batch=128)
    return export(net, x[:2], None)


def keras_cnn(x, y, epochs: int):
    import keras

    from onnx_rmpe.keras import export
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(10)])
    net.compile(keras.optimizers.Adam(2e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x.transpose(0, 2, 3, 1), y, epochs=epochs, batch_size=128, verbose=0)
    return export(net, None)


def evaluate(model, x, y, xt, yt, T: int = max(STEPS)) -> dict[str, float]:
    from onnx_rmpe.conversion import convert
    from tests.helpers import accuracy
    from tests.test_zoo import run_all
    res = convert(model, T=T, calib=x[:512], levels=8, threads=1, rmpe=False)
    row = {"ANN": accuracy(run_all(model, xt)[0], yt),
           "QCFS": accuracy(run_all(res.qcfs, xt)[0], yt)}
    out = res.snn.graph.output[0].name
    per_step = run_all(res.snn, xt, [f"{out}_per_step"])[0]
    row.update({f"T={t}": accuracy(per_step[t - 1], yt) for t in STEPS})
    rmpe = {"ANN": row["ANN"], "QCFS": row["QCFS"]}
    for t in STEPS:  # RMPE is calibrated for one T: one conversion per T
        calibrated = convert(model, T=t, calib=x[:512], levels=8, threads=1)
        rmpe[f"T={t}"] = accuracy(run_all(calibrated.snn, xt)[0], yt)
    return {"plain": row, "RMPE": rmpe}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/frameworks_fashion.md")
    args = ap.parse_args()
    start = time.time()
    (x, y), (xt, yt) = load(args.train, args.test)
    rows = {"PyTorch VGG-like, MaxPool (TorchScript export)":
            evaluate(torch_vgg(x, y, args.epochs), x, y, xt, yt)}
    try:
        import tf2onnx  # noqa: F401
        xk, xtk = x.transpose(0, 2, 3, 1), xt.transpose(0, 2, 3, 1)
        keras_model = keras_cnn(x, y, args.epochs)
        rows["Keras CNN, MaxPool (tf2onnx)"] = evaluate(keras_model, xk, y, xtk, yt)
    except ImportError:
        pass
    cols = ["ANN", "QCFS"] + [f"T={t}" for t in STEPS]
    lines = [f"Command: `python benchmarks/frameworks_fashion.py --train {args.train} --test "
             f"{args.test} --epochs {args.epochs}`; machine: {os.cpu_count()}-core CPU "
             f"({platform.machine()}); date: {datetime.date.today()}; "
             f"{time.time() - start:.0f} s in all.",
             f"Training on a {args.train}-image random subsample of Fashion-MNIST, {args.epochs} "
             f"epochs; test on the first {args.test} test images; QCFS L=8 post-training "
             "(99.9th percentile thresholds on 512 training images); SNN plain (rmpe=False, "
             "per-step outputs of one T=64 model) and with RMPE (default convert, calibrated "
             "on the same 512 images, one conversion per T).", "",
             "| model | SNN | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, pair in rows.items():
        for kind, row in pair.items():
            lines.append(f"| {name} | {kind} | " +
                         " | ".join(f"{100 * row[c]:.1f}" for c in cols) + " |")
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as fh:
        fh.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
