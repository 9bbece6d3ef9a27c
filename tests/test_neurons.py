"""The neuron functions against their numpy references (onnxruntime and onnx.reference)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_rmpe.modelio import ensure_functions
from onnx_rmpe.runtime.neurons import DOMAIN, IF_OP, QCFS_OP, if_reference, qcfs_reference
from tests.helpers import run


def _single(op: str, attrs: dict, extra: dict) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in extra.items()]
    node = helper.make_node(op, ["x", *extra], ["y"], domain=DOMAIN, **attrs)
    shape = ["B", 3, 5]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    model = ensure_functions(model)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("levels", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("lam", [0.3, 1.0, 7.5])
def test_qcfs_matches_numpy_off_grid(levels, lam, rng):
    model = _single(QCFS_OP, {"levels": levels, "phi": 0.5}, {"lam": np.array(lam)})
    x = rng.normal(0, lam, (64, 3, 5)).astype(np.float32)
    grid = np.round(x * levels / lam - 0.5)  # keep away from the floor's jump points
    x = np.where(np.abs(x * levels / lam - 0.5 - grid) < 1e-3, x + 1e-2, x).astype(np.float32)
    got = run(model, x)[0]
    want = lam * np.clip(np.floor(x * levels / lam + 0.5) / levels, 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-6 * lam)
    np.testing.assert_array_equal(got, qcfs_reference(x, lam, levels))
    assert np.unique(got).size <= levels + 1


@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("per_neuron", [False, True])
def test_if_function_matches_reference(T, per_neuron, rng):
    theta = np.float32(0.8)
    v_init = rng.normal(0, 0.2, (3, 5)).astype(np.float32) if per_neuron else np.float32(0)
    model = _single(IF_OP, {"T": T, "phi": 0.5}, {"theta": theta, "v_init": v_init})
    x = rng.normal(0.2, 0.6, (T * 7, 3, 5)).astype(np.float32)
    got = run(model, x)[0]
    spikes, _ = if_reference(x.reshape(T, 7, 3, 5), theta, v_init)
    np.testing.assert_array_equal(got.reshape(T, 7, 3, 5), spikes * theta)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ref, got)
    assert set(np.unique(got)) <= {0.0, theta}


@pytest.mark.parametrize("L", [2, 4, 8])
def test_golden_constant_input_T_equals_L(L, rng):
    """An IF neuron fed the same z for T = L steps fires theta*N/T = h(z) exactly."""
    theta = np.float32(1.3)
    z = rng.uniform(-0.5, 1.8, (200, 3, 5)).astype(np.float32)
    spikes, _ = if_reference(np.stack([z] * L), theta)
    rate = spikes.sum(0) * theta / np.float32(L)
    np.testing.assert_allclose(rate, qcfs_reference(z, theta, L), atol=1e-6)
