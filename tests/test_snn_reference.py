"""The converted SNN of a trained QCFS net against an independent step-by-step IF simulation.

The reference below is plain torch on the torch modules themselves (no ONNX, no
onnx-rmpe runtime): each QCFS layer becomes an IF neuron with threshold ``lam``, start
potential ``lam / 2 + v_init``, reset by subtraction; pooling, flattening and the linear
layers run on the spikes of every step; the logits are averaged over the T steps. Every
layer is compared, not only the first (which alone is exact against the QCFS ANN): a
converter that dropped the trained thresholds, used another start potential or shift,
pooled in another order or read the output otherwise would fail here.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_rmpe.conversion import convert
from onnx_rmpe.ops import DOMAIN, IF_OP
from tests.helpers import run

torch = pytest.importorskip("torch")
from onnx_rmpe.torch.export import export  # noqa: E402
from onnx_rmpe.torch.qcfs import QCFS  # noqa: E402

L = 4


@pytest.fixture(scope="module")
def qcfs_net(digits_data):
    """Conv-QCFS-AvgPool-Conv-QCFS-Flatten-Linear-QCFS-Linear with thresholds at the 99th
    percentile of each layer's positive inputs (random weights: many active neurons)."""
    nn = torch.nn
    (x, _), _ = digits_data
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), QCFS(L), nn.AvgPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1), QCFS(L), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 32), QCFS(L), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        for i, layer in enumerate(net):
            if isinstance(layer, QCFS):
                z = net[:i](torch.from_numpy(x[:256]))
                layer.lam.fill_(float(torch.quantile(z[z > 0], 0.99)))
    return net, export(net, x[:1])


def reference_snn(net, x: np.ndarray, T: int, v_init=None) -> np.ndarray:
    """Per-step cumulative mean of the logits ``[T, N, K]`` of the IF simulation of ``net``."""
    v: dict[int, torch.Tensor] = {}
    total, curve = 0.0, []
    with torch.no_grad():
        for t in range(T):
            h = torch.from_numpy(x)
            for i, layer in enumerate(net):
                if not isinstance(layer, QCFS):
                    h = layer(h)
                    continue
                lam = layer.lam
                if i not in v:
                    extra = 0.0 if v_init is None else torch.from_numpy(np.array(v_init[len(v)]))
                    v[i] = torch.full_like(h, 0.5) * lam + extra
                v[i] = v[i] + h
                spikes = (v[i] >= lam).to(h.dtype)
                v[i] = v[i] - spikes * lam
                h = spikes * lam
            total = total + h
            curve.append((total / (t + 1)).numpy())
    return np.stack(curve)


def neuron_values(snn: onnx.ModelProto, index: int) -> list[np.ndarray]:
    """Input ``index`` (1: theta, 2: v_init) of every IF neuron, in graph order."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in snn.graph.initializer}
    return [inits[n.input[index]] for n in snn.graph.node
            if n.domain == DOMAIN and n.op_type == IF_OP]


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    """Same logits for (nearly) every sample: a spike whose membrane sits within float
    rounding of the threshold may flip between two float32 implementations."""
    same = np.all(np.isclose(got, want, atol=1e-3, rtol=1e-4), axis=-1)
    assert same.mean() >= 0.98, f"{same.mean():.3f} of the samples match"
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.98


@pytest.mark.parametrize("T", [1, L, 7])
def test_plain_snn_matches_reference_simulation(qcfs_net, digits_data, T):
    net, model = qcfs_net
    _, (xt, _) = digits_data
    snn = convert(model, T=T, rmpe=False).snn
    lams = [float(m.lam.detach()) for m in net if isinstance(m, QCFS)]
    np.testing.assert_allclose([float(t) for t in neuron_values(snn, 1)], lams, rtol=1e-6)
    out, per_step = run(snn, xt)
    want = reference_snn(net, xt, T)
    assert_matches(out, want[-1])
    for t in range(T):
        assert_matches(per_step[t], want[t])


def test_rmpe_snn_matches_reference_simulation(qcfs_net, digits_data):
    """With RMPE's calibrated ``v_init`` added to the reference's start potentials, at T = L."""
    net, model = qcfs_net
    (x, _), (xt, _) = digits_data
    snn = convert(model, T=L, calib=x[:256], calib_samples=256).snn
    v_init = neuron_values(snn, 2)
    assert any(np.abs(v).max() > 0 for v in v_init)
    out = run(snn, xt)[0]
    assert_matches(out, reference_snn(net, xt, L, v_init)[-1])
    plain = reference_snn(net, xt, L)[-1]  # v_init changes the outputs: not a vacuous match
    same_as_plain = np.all(np.isclose(out, plain, atol=1e-3, rtol=1e-4), axis=-1).mean()
    assert same_as_plain < 0.5, same_as_plain
