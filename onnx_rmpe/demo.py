"""The built-in example: a small CNN on scikit-learn's digits, trained, exported, converted.

Needs the ``torch`` extra (torch and scikit-learn); nothing is downloaded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx_rmpe import validate
from onnx_rmpe.conversion import build_qcfs, convert, qcfs_to_snn
from onnx_rmpe.data import Dataset
from onnx_rmpe.errors import MissingDependencyError, OptionError
from onnx_rmpe.evaluation import evaluate
from onnx_rmpe.reporting import ReportResult, report
from onnx_rmpe.runtime.progress import progress_bar

logger = logging.getLogger(__name__)

DEMO_STEPS = (1, 2, 4, 8, 16, 32)


@dataclass
class DemoResult:
    ann_accuracy: float
    qcfs_accuracy: float
    plain: dict[int, float] = field(default_factory=dict)
    rmpe: dict[int, float] = field(default_factory=dict)
    snn_path: Path | None = None
    report: ReportResult | None = None
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _need(module: str, package: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependencyError(package, "torch", "the demo") from None


def digits_split(seed: int = 0) -> tuple[Dataset, Dataset]:
    """Digits (1797 8x8 images scaled to [0, 1], NCHW): 1400 for training, the rest held out."""
    _need("sklearn", "scikit-learn")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    idx = np.random.default_rng(seed).permutation(len(x))
    x, y = x[idx], d.target[idx].astype(np.int64)
    return Dataset(x[:1400], y[:1400], "digits-train"), Dataset(x[1400:], y[1400:], "digits-test")


def train_digits_cnn(train: Dataset, *, epochs: int = 20, seed: int = 0,
                     progress: bool = False) -> onnx.ModelProto:
    """Train a small VGG-like CNN (Conv-BN-ReLU, AvgPool) with torch and export it to ONNX."""
    torch = _need("torch", "torch")
    nn = torch.nn
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    from onnx_rmpe.torch.classifier import train_classifier
    from onnx_rmpe.torch.export import export

    with progress_bar(progress, "train") as bar:
        task = bar.add_task("epochs (loss -)", total=epochs)

        def epoch_done(epoch: int, loss: float, seconds: float) -> None:
            bar.update(task, advance=1, description=f"epoch {epoch}/{epochs} (loss "
                                                    f"{loss:.3f})")

        train_classifier(net, train.x, train.y, epochs=epochs, lr=3e-3, batch=64, seed=seed,
                         threads=None, on_epoch=epoch_done)
    return export(net, train.x[:1], opset=None, input_names=["image"],
                  output_names=["logits"])


def run_demo(out_dir: str | Path = "onnx-rmpe-demo", *, T: int = 4, levels: int = 8,
             epochs: int = 20, seed: int = 0, progress: bool = False) -> DemoResult:
    """Train, export, convert, evaluate and report; writes models, data and the report
    (``out_dir/report``: JSON and, with matplotlib, PNGs) to ``out_dir``."""
    start = time.perf_counter()
    validate.time_steps("T", T)
    validate.integer("levels", levels, minimum=1)
    validate.integer("epochs", epochs, minimum=1)
    validate.integer("seed", seed, minimum=0)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OptionError("out_dir", f"'{out}' exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    train, test = digits_split(seed)
    ann = train_digits_cnn(train, epochs=epochs, seed=seed, progress=progress)
    ann_path = out / "digits_cnn.onnx"
    onnx.save(ann, str(ann_path))
    np.savez(out / "train.npz", x=train.x, y=train.y)  # for `onnx-rmpe finetune`
    np.savez(out / "calib.npz", x=train.x[:512], y=train.y[:512])
    np.savez(out / "test.npz", x=test.x, y=test.y)
    result = DemoResult(evaluate(ann, test).accuracy, 0.0)
    calib = train.head(512)
    qcfs, _ = build_qcfs(ann, calib, levels=levels)
    result.qcfs_accuracy = evaluate(qcfs, test).accuracy
    plain = evaluate(qcfs_to_snn(qcfs, T=max(DEMO_STEPS)), test, steps=list(DEMO_STEPS))
    result.plain = dict(zip(plain.steps, plain.accuracy_per_step))
    with progress_bar(progress, "convert") as bar:
        task = bar.add_task("with RMPE", total=len(DEMO_STEPS))
        for steps in DEMO_STEPS:
            bar.update(task, description=f"with RMPE, T={steps}")
            snn = convert(ann, T=steps, calib=calib, levels=levels).snn
            result.rmpe[steps] = evaluate(snn, test).accuracy
            bar.advance(task)
    snn_path = out / "digits_cnn.snn.onnx"
    converted = convert(ann_path, T=T, calib=calib, levels=levels, output=snn_path,
                        save_qcfs=out / "digits_cnn.qcfs.onnx")
    result.snn_path = snn_path
    result.report = report(snn_path, test, qcfs=converted.qcfs, ann=ann,
                           out_dir=out / "report", progress=progress)
    result.files = sorted(out.iterdir())
    result.seconds = time.perf_counter() - start
    return result
