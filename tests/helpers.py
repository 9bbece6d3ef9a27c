"""Shared test helpers: tiny data, tiny trained networks, numerical comparison."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: np.ndarray, outputs: Sequence[str] | None = None):
    s = session(model)
    return s.run(list(outputs) if outputs else None, {s.get_inputs()[0].name: x})


def assert_numerically_equal(original: onnx.ModelProto, rewritten: onnx.ModelProto,
                             inputs: np.ndarray, atol: float = 1e-5, *,
                             reference: bool = False) -> None:
    """Both models give the same first output on ``inputs`` (onnxruntime; optionally also
    onnx.reference on the rewritten model) and the rewritten one passes the full checker."""
    onnx.checker.check_model(rewritten, full_check=True)
    want = run(original, inputs)[0]
    got = run(rewritten, inputs)[0]
    assert want.shape == got.shape, (want.shape, got.shape)
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    if reference:
        from onnx.reference import ReferenceEvaluator
        name = rewritten.graph.input[0].name
        ref = ReferenceEvaluator(rewritten).run(None, {name: inputs})[0]
        np.testing.assert_allclose(ref, got, atol=max(atol, 1e-5), rtol=0)


def digits(seed: int = 0):
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], split 1400 / 397, NCHW."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def train(net, x: np.ndarray, y: np.ndarray, *, epochs: int = 15, lr: float = 1e-2,
          seed: int = 0, batch: int = 64):
    """Train a torch module a few seconds (Adam, cross-entropy); returns it in eval mode.

    The shared loop :func:`onnx_rmpe.torch.classifier.train_classifier`, re-initialized from
    ``seed`` and on one torch thread, so the tests' numbers are reproducible.
    """
    from onnx_rmpe.torch.classifier import train_classifier
    return train_classifier(net, x, y, epochs=epochs, lr=lr, seed=seed, batch=batch,
                            reset=True)


def export_torch(net, example: np.ndarray, path=None) -> onnx.ModelProto:
    """The library's TorchScript-based export (dynamic batch), input ``input``, output
    ``logits``, at the exporter's default opset."""
    from onnx_rmpe.torch.export import export
    return export(net, example[:1], path, opset=None, output_names=["logits"])


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == y).mean())
