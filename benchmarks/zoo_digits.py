"""The architecture table: each zoo model (tests/test_zoo.py) on scikit-learn digits.

Trains each small network a few seconds, exports it, converts it (post-training QCFS,
L=8) and prints the markdown table of QCFS ANN and SNN accuracy at T = 4, 8, 64 on the
397-image held-out split. Usage::

    python benchmarks/zoo_digits.py [--out benchmarks/results/zoo_table.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.helpers import accuracy, digits  # noqa: E402

STEPS = (4, 8, 64)
ROWS = {
    "vgg_maxpool": ("VGG (conv-BN-ReLU, MaxPool)", "PyTorch, TorchScript"),
    "resnet": ("ResNet (identity + 1x1-conv shortcuts)", "PyTorch, TorchScript"),
    "mobilenet_relu6": ("MobileNet (depthwise-separable, ReLU6)", "PyTorch, TorchScript"),
    "dense_inception": ("DenseNet/Inception (Concat)", "PyTorch, TorchScript"),
    "mlp": ("MLP", "PyTorch, TorchScript"),
    "normalized_input": ("CNN with (x - mean) / std inside", "PyTorch, TorchScript"),
    "static_batch_dynamo": ("CNN, static batch 1, external weights", "PyTorch, dynamo"),
    "dynamo_dynamic": ("CNN (AvgPool), dynamic batch", "PyTorch, dynamo"),
    "two_outputs": ("CNN with two outputs (2nd head)", "PyTorch, TorchScript"),
    "keras_tf2onnx": ("Keras CNN (MaxPool, trained QCFS layer)", "Keras 3, tf2onnx"),
}


class _Factory:
    """Gives tests/test_zoo.py's lazy ``zoo`` fixture its inputs outside pytest."""

    def mktemp(self, name: str):
        import tempfile
        from pathlib import Path
        return Path(tempfile.mkdtemp(prefix=name))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/zoo_table.md")
    args = ap.parse_args()
    import tests.test_zoo as zoo_mod
    get = zoo_mod.make_zoo(digits(), _Factory())
    (_, _), (_, yt) = digits()
    start = time.time()
    from onnx_rmpe.conversion import convert
    from tests.test_zoo import run_all
    lines = ["| architecture | exported with | QCFS ANN | " +
             " | ".join(f"SNN T={t}" for t in STEPS) + " | " +
             " | ".join(f"RMPE T={t}" for t in STEPS) + " |",
             "|---" * (3 + 2 * len(STEPS)) + "|"]
    for key, (name, exporter) in ROWS.items():
        try:
            z = get(key)
        except BaseException as exc:  # noqa: BLE001 - a failing row is reported, not hidden
            lines.append(f"| {name} | {exporter} | fails: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:80]} |" + " |" * (2 * len(STEPS)))
            continue
        k = len(z.snn_out) - 1     # the last output (the only one, or the 2nd head)
        snn = [accuracy(z.per_step[k][t - 1], yt) for t in STEPS]
        rmpe = [accuracy(run_all(convert(z.result.qcfs_source, T=t, calib=z.calib, levels=8,
                                         threads=1).snn, z.x_test)[k], yt) for t in STEPS]
        lines.append(f"| {name} | {exporter} | {100 * z.qcfs_acc[k]:.1f} | " +
                     " | ".join(f"{100 * a:.1f}" for a in snn + rmpe) + " |")
    lines += ["", f"scikit-learn digits (8x8), 1400 train / 397 held-out images; QCFS L=8 "
              f"post-training (99.9th percentile, 512 images). SNN: plain conversion (per-step "
              f"outputs of one T=64 model); RMPE: default convert (calibrated on the same 512 "
              f"images, checked), one conversion per T. Command: `python "
              f"benchmarks/zoo_digits.py`; machine: {os.cpu_count()}-core CPU; date: "
              f"{datetime.date.today()}; {time.time() - start:.0f} s."]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as fh:
        fh.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
