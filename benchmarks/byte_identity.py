"""Proof that a restructuring changed no output: sha256 of every file ``convert`` writes.

Converts a fixed set of models with fixed options and seeds and prints (and writes, as
JSON) the sha256 of each output file. Run it before and after a behaviour-preserving
change; the two JSON files must be identical (``--check`` compares with a saved file and
exits 1 on any difference).

Models (built once, deterministically, and cached in ``--cache``, so both runs convert
the very same input bytes; their hashes are recorded too):

* ``demo``: the demo's digits CNN (:func:`onnx_rmpe.demo.train_digits_cnn`, seed 0, 5
  epochs; Conv-BN-ReLU, AvgPool, MLP head);
* ``vgg``: ``tests/nets.py::vgg_like`` trained 3 epochs on digits (Dropout, BatchNorm);
* ``resnet``: ``tests/nets.py::ResNetLike`` trained 3 epochs (residual Adds, 1x1 shortcut);
* ``squeezenet``: the onnx wheel's light SqueezeNet with random weights at 32x32
  (:mod:`onnx_rmpe.lightzoo`; Concat, MaxPool, old opset).

Calibration data: the first 128 digits training images (seed 0), or 16 seeded uniform
images for SqueezeNet. Cases cover T = 2, 4, 8, modes multistep / streaming / chunked /
unrolled, RMPE on and off, ``thresholds`` search and percentile, and ``save_qcfs``.

Usage::

    python benchmarks/byte_identity.py --out benchmarks/results/byte_identity.json
    python benchmarks/byte_identity.py --check benchmarks/results/byte_identity.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
#: (case name, model, convert options). save_qcfs is added by the runner when asked.
CASES: list[tuple[str, str, dict]] = [
    ("demo_T4_multistep", "demo", {"T": 4, "save_qcfs": True}),
    ("demo_T4_norpme", "demo", {"T": 4, "rmpe": False}),
    ("demo_T2_streaming", "demo", {"T": 2, "mode": "streaming"}),
    ("demo_T8_chunked", "demo", {"T": 8, "mode": "chunked", "chunk": 4}),
    ("demo_T2_unrolled", "demo", {"T": 2, "mode": "unrolled"}),
    ("demo_T8_percentile_channel", "demo", {"T": 8, "thresholds": "percentile",
                                            "rmpe_granularity": "channel", "levels": 4}),
    ("vgg_T4_multistep", "vgg", {"T": 4, "save_qcfs": True}),
    ("vgg_T8_streaming_norpme", "vgg", {"T": 8, "mode": "streaming", "rmpe": False}),
    ("resnet_T4_multistep", "resnet", {"T": 4, "save_qcfs": True}),
    ("resnet_T2_chunked", "resnet", {"T": 2, "mode": "chunked", "chunk": 1}),
    ("resnet_T8_unrolled_norpme", "resnet", {"T": 8, "mode": "unrolled", "rmpe": False}),
    ("squeezenet_T4_multistep", "squeezenet", {"T": 4}),
    ("squeezenet_T2_streaming_norpme", "squeezenet", {"T": 2, "mode": "streaming",
                                                      "rmpe": False}),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digits():
    from onnx_rmpe.demo import digits_split

    train, _ = digits_split(0)
    return train


def _torch_net(name: str, train) -> onnx.ModelProto:
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.helpers import export_torch
    from tests.helpers import train as train_net
    from tests.nets import ResNetLike, vgg_like

    torch.manual_seed(0)
    net = vgg_like() if name == "vgg" else ResNetLike()
    net = train_net(net, train.x, train.y, epochs=3, seed=0)
    return export_torch(net, train.x)


def build_model(name: str, cache: Path) -> Path:
    """The input model ``name``, built once and cached (so runs see the same bytes)."""
    path = cache / f"{name}.onnx"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    if name == "demo":
        import torch

        from onnx_rmpe.demo import train_digits_cnn

        torch.set_num_threads(1)
        model = train_digits_cnn(_digits(), epochs=5, seed=0)
    elif name in ("vgg", "resnet"):
        model = _torch_net(name, _digits())
    else:
        from onnx_rmpe.lightzoo import light_model

        model = light_model("squeezenet", size=32, seed=0, softmax=False)
    onnx.save(model, str(path))
    return path


def calib_for(name: str) -> np.ndarray:
    if name == "squeezenet":
        return np.random.default_rng(0).uniform(0, 1, (16, 3, 32, 32)).astype(np.float32)
    return _digits().x[:128]


def run(cache: Path) -> dict[str, str]:
    from onnx_rmpe import convert

    hashes: dict[str, str] = {}
    models = sorted({m for _, m, _ in CASES})
    for name in models:
        hashes[f"input/{name}.onnx"] = sha256(build_model(name, cache))
    with tempfile.TemporaryDirectory() as tmp:
        for case, name, opts in CASES:
            opts = dict(opts)
            out = Path(tmp) / f"{case}.snn.onnx"
            if opts.pop("save_qcfs", False):
                opts["save_qcfs"] = Path(tmp) / f"{case}.qcfs.onnx"
            convert(str(cache / f"{name}.onnx"), calib=calib_for(name), output=out,
                    calib_samples=None, batch_size=64, threads=1, **opts)
            for path in sorted(Path(tmp).glob(f"{case}.*")):
                key = f"{case}/{path.name.removeprefix(case + '.')}"
                hashes[key] = sha256(path)
                print(f"{hashes[key]}  {key}", flush=True)
    return hashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "onnx-rmpe-bench" / "byte-identity")
    parser.add_argument("--out", type=Path, help="write the hashes (JSON) here")
    parser.add_argument("--check", type=Path, help="compare with this saved JSON")
    args = parser.parse_args()
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    import onnx_rmpe

    print(f"onnx_rmpe from {Path(onnx_rmpe.__file__).parent}", flush=True)
    hashes = run(args.cache)
    if args.out is not None:
        args.out.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    if args.check is not None:
        saved = json.loads(args.check.read_text())
        diff = sorted(k for k in saved.keys() | hashes.keys() if saved.get(k) != hashes.get(k))
        for key in diff:
            print(f"DIFFERS: {key}: {saved.get(key)} -> {hashes.get(key)}")
        print(f"{len(hashes) - len(diff)} of {len(saved)} files identical")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
