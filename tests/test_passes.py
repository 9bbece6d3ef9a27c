"""Each pass on tiny graphs: positive and negative case, numerical equivalence."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_rmpe.errors import UnsupportedOpError
from onnx_rmpe.modelio import prepare, to_graph, to_model
from onnx_rmpe.passes.fold_batchnorm import fold_batchnorm
from onnx_rmpe.passes.maxpool_reorder import maxpool_reorder
from onnx_rmpe.passes.normalize import normalize
from onnx_rmpe.passes.relu_to_qcfs import activation_sites, relu_to_qcfs
from onnx_rmpe.passes.support import check_supported, find_blockers
from onnx_rmpe.runtime.neurons import qcfs_reference
from tests.graphs import conv_bn_relu, make_model, vi
from tests.helpers import assert_numerically_equal, run


def _apply(model, fn):
    graph = to_graph(prepare(model))
    graph, changed = fn(graph)
    return to_model(graph, keep_shapes=True), changed


def _ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
def test_fold_batchnorm_conv(bias, groups, rng):
    model = conv_bn_relu(rng, bias=bias, groups=groups)
    folded, changed = _apply(model, fold_batchnorm)
    assert changed and "BatchNormalization" not in _ops(folded)
    x = rng.normal(size=(5, 2 * groups, 6, 6)).astype(np.float32)
    assert_numerically_equal(model, folded, x, atol=1e-5, reference=True)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_fold_batchnorm_gemm_and_matmul(trans_b, with_c, rng):
    w = rng.normal(size=(6, 4) if trans_b else (4, 6)).astype(np.float32)
    bn = [("g", rng.uniform(0.5, 2, 6)), ("be", rng.normal(size=6)), ("m", rng.normal(size=6)),
          ("v", rng.uniform(0.5, 2, 6))]
    bn = [(k, v.astype(np.float32)) for k, v in bn]
    gemm_in = ["x", "w"] + (["c"] if with_c else [])
    inits = [("w", w), *bn] + ([("c", rng.normal(size=6).astype(np.float32))] if with_c else [])
    for lin in ("Gemm", "MatMul"):
        if lin == "MatMul" and (trans_b or with_c):
            continue
        attrs = {"transB": trans_b} if lin == "Gemm" else {}
        node = helper.make_node(lin, gemm_in, ["h"], **attrs)
        bn_node = helper.make_node("BatchNormalization", ["h", "g", "be", "m", "v"], ["y"])
        model = make_model([node, bn_node], [vi("x", ["N", 4])], [vi("y", ["N", 6])], inits)
        folded, changed = _apply(model, fold_batchnorm)
        assert changed and "BatchNormalization" not in _ops(folded)
        assert_numerically_equal(model, folded, rng.normal(size=(9, 4)).astype(np.float32), 1e-5)


def test_fold_batchnorm_leaves_lone_batchnorm(rng):
    bn = [(k, rng.uniform(0.5, 2, 2).astype(np.float32)) for k in ("g", "be", "m", "v")]
    model = make_model([helper.make_node("BatchNormalization", ["x", "g", "be", "m", "v"], ["y"])],
                       [vi("x", ["N", 2, 3, 3])], [vi("y", ["N", 2, 3, 3])], bn)
    out, changed = _apply(model, fold_batchnorm)
    assert not changed and _ops(out) == ["BatchNormalization"]


def test_normalize_removes_passthrough_and_frees_batch(rng):
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Dropout", ["i"], ["d"]),
             helper.make_node("Reshape", ["d", "shape"], ["r"]),
             helper.make_node("Relu", ["r"], ["y0"]),
             helper.make_node("Identity", ["y0"], ["y"])]
    model = make_model(nodes, [vi("x", [1, 2, 3])], [vi("y", [1, 6])],
                       [("shape", np.array([1, -1], np.int64))])
    out, changed = _apply(model, normalize)
    assert changed and _ops(out) == ["Reshape", "Relu"]
    assert [o.name for o in out.graph.output] == ["y"]
    shape = next(i for i in out.graph.initializer if i.name.endswith("_shape"))
    assert onnx.numpy_helper.to_array(shape).tolist() == [-1, 6]
    x = rng.normal(size=(4, 2, 3)).astype(np.float32)  # batch 4 now runs
    np.testing.assert_array_equal(run(out, x)[0], np.maximum(x.reshape(4, 6), 0))


def test_normalize_negative_case_changes_nothing(rng):
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                       [vi("x", ["N", 3])], [vi("y", ["N", 3])])
    out, changed = _apply(model, normalize)
    assert not changed and _ops(out) == ["Relu"]


@pytest.mark.parametrize("act,cap", [("Relu", None), ("Clip", 6.0), ("Max", None),
                                     ("Where", None)])
def test_relu_to_qcfs_matches_numpy(act, cap, rng):
    model = conv_bn_relu(rng, act=act, bn=False)
    graph, _ = normalize(to_graph(prepare(model)))  # names the nodes
    sites = activation_sites(graph)
    assert len(sites) == 1 and sites[0].cap == cap and sites[0].node
    lam = 9.0 if cap is None else 7.0  # a Clip caps lam at its max
    graph, changed = relu_to_qcfs(graph, thresholds={sites[0].node: lam}, levels=4)
    qcfs = to_model(graph, keep_shapes=True)
    onnx.checker.check_model(qcfs, full_check=True)
    assert changed and "QCFS" in _ops(qcfs) and act not in _ops(qcfs)
    assert "Greater" not in _ops(qcfs)
    check_supported(to_graph(prepare(model)))  # the ReLU form itself is accepted
    expose = onnx.ModelProto()
    expose.CopyFrom(qcfs)
    expose.graph.output.extend([helper.make_empty_tensor_value_info("c"),
                                helper.make_empty_tensor_value_info("a")])
    x = rng.normal(size=(16, 2, 6, 6)).astype(np.float32)
    _, z, a = run(expose, x)
    want_lam = min(lam, cap) if cap else lam
    np.testing.assert_array_equal(a, qcfs_reference(z, want_lam, 4))


def test_relu_to_qcfs_negative_case(rng):
    model = make_model([helper.make_node("Flatten", ["x"], ["y"])], [vi("x", ["N", 2, 2])],
                       [vi("y", ["N", 4])])
    graph, changed = relu_to_qcfs(to_graph(prepare(model)), thresholds={}, levels=4)
    assert not changed


def _relu_pool_model(rng, pool="MaxPool"):
    w = rng.normal(size=(3, 1, 3, 3)).astype(np.float32)
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 0, 0]} \
        if pool == "MaxPool" else {}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node(pool, ["r"], ["y"], **attrs)]
    out_shape = ["N", 3, 3, 3] if pool == "MaxPool" else ["N", 3, 1, 1]
    return make_model(nodes, [vi("x", ["N", 1, 6, 6])], [vi("y", out_shape)], [("w", w)])


@pytest.mark.parametrize("pool", ["MaxPool", "GlobalMaxPool"])
def test_maxpool_reorder_is_exact(pool, rng):
    model = _relu_pool_model(rng, pool)
    graph = to_graph(prepare(model))
    graph, _ = relu_to_qcfs(graph, thresholds={"relu": 2.0}, levels=4)
    before = to_model(graph.copy(), keep_shapes=True)
    graph, changed = maxpool_reorder(graph)
    after = to_model(graph, keep_shapes=True)
    assert changed
    ops = _ops(after)
    assert ops.index(pool) < ops.index("QCFS")
    x = rng.normal(size=(8, 1, 6, 6)).astype(np.float32)
    assert_numerically_equal(before, after, x, atol=0.0, reference=True)


def test_maxpool_reorder_negative_case(rng):
    graph = to_graph(prepare(_relu_pool_model(rng)))  # no QCFS yet: nothing to move
    _, changed = maxpool_reorder(graph)
    assert not changed


def test_unsupported_ops_listed_together(rng):
    model = conv_bn_relu(rng, act="LeakyRelu")
    nodes = list(model.graph.node) + [helper.make_node("Sigmoid", ["y"], ["s"], name="sig")]
    model = make_model(nodes, list(model.graph.input), [vi("s", ["N", 3])],
                       [(i.name, onnx.numpy_helper.to_array(i)) for i in model.graph.initializer])
    with pytest.raises(UnsupportedOpError) as err:
        check_supported(to_graph(prepare(model)))
    text = str(err.value)
    assert "LeakyRelu" in text and "Sigmoid" in text and "'sig'" in text
    assert "replace LeakyReLU by ReLU and fine-tune" in text
    assert "supported ops:" in text and len(err.value.nodes) == 2


def test_supported_graph_passes_check(rng):
    graph = to_graph(prepare(conv_bn_relu(rng)))
    before = [(n.name, n.op) for n in graph.nodes]
    assert find_blockers(graph) == []
    check_supported(graph)  # a check: raises nothing, changes nothing
    assert [(n.name, n.op) for n in graph.nodes] == before
