"""The shared training loop (``onnx_rmpe.torch.classifier``) and the library's export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnx_rmpe.torch.classifier import train_classifier  # noqa: E402
from onnx_rmpe.torch.export import export  # noqa: E402
from tests.helpers import accuracy, run  # noqa: E402


def _mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10))


def _weights(net) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])


def test_learns_reproducibly_and_exports(digits_data):
    (x, y), (xt, yt) = digits_data
    threads = torch.get_num_threads()
    a = train_classifier(_mlp(), x, y, epochs=6, lr=1e-2, reset=True, seed=3)
    assert torch.get_num_threads() == threads  # restored after training on one thread
    b = train_classifier(_mlp(), x, y, epochs=6, lr=1e-2, reset=True, seed=3)
    c = train_classifier(_mlp(), x, y, epochs=6, lr=1e-2, reset=True, seed=4)
    assert not a.training
    np.testing.assert_array_equal(_weights(a), _weights(b))
    assert np.abs(_weights(a) - _weights(c)).max() > 1e-3
    model = export(a, xt[:1], opset=None, output_names=["logits"])
    assert [o.name for o in model.graph.output] == ["logits"]
    logits = run(model, xt)[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, a(torch.from_numpy(xt)).numpy(), atol=1e-5)
    assert accuracy(logits, yt) > 0.85


def test_schedule_weight_decay_and_augment_are_used(digits_data):
    (x, y), _ = digits_data
    seen = []

    def flip(batch, gen):
        seen.append(len(batch))
        return torch.flip(batch, dims=[-1])

    losses = []
    net = train_classifier(_mlp(), x, y, epochs=2, lr=1e-3, batch=100, weight_decay=5e-4,
                           max_lr=5e-3, augment=flip, reset=True,
                           on_epoch=lambda e, loss, s: losses.append((e, loss)))
    assert sum(seen) == 2 * len(x) and max(seen) == 100
    assert [e for e, _ in losses] == [1, 2] and all(np.isfinite(v) for _, v in losses)
    plain = train_classifier(_mlp(), x, y, epochs=2, lr=1e-3, batch=100, reset=True)
    assert np.abs(_weights(net) - _weights(plain)).max() > 1e-4
