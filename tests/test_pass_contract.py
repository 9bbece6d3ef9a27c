"""The pass contract: Sequential, skip reasons, invariant checks, internal vs user errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import helper

from onnx_rmpe.errors import ConversionError, InternalError, InvariantError, PassError
from onnx_rmpe.modelio import prepare, to_graph
from onnx_rmpe.passes import invariants
from onnx_rmpe.passes.base import FunctionPass, PassResult, Sequential, run_passes
from onnx_rmpe.passes.fold_batchnorm import fold_batchnorm
from onnx_rmpe.passes.maxpool_reorder import maxpool_reorder
from onnx_rmpe.passes.normalize import normalize
from onnx_rmpe.passes.pipeline import prepare_passes, qcfs_passes
from onnx_rmpe.passes.relu_to_qcfs import relu_to_qcfs
from tests.graphs import conv_bn_relu, make_model, vi
from tests.kit import check_pass


def _graph(rng, **kw):
    return to_graph(prepare(conv_bn_relu(rng, **kw)))


def _boom(graph):
    raise KeyError("no such tensor")


def test_unexpected_exception_is_internal_with_traceback(rng):
    seq = Sequential(FunctionPass("normalize", normalize), FunctionPass("boom", _boom))
    with pytest.raises(PassError) as err:
        seq(_graph(rng))
    assert not isinstance(err.value, ConversionError)
    assert isinstance(err.value, InternalError)
    assert isinstance(err.value.__cause__, KeyError)  # the original traceback is kept
    assert err.value.__cause__.__traceback__ is not None
    assert "'boom'" in str(err.value) and "normalize" in str(err.value)


def test_user_error_passes_through(rng):
    def refuse(graph):
        raise ConversionError("node 'x' cannot be converted")
    with pytest.raises(ConversionError) as err:
        run_passes(_graph(rng), [FunctionPass("refuse", refuse)])
    assert not isinstance(err.value, PassError)


def test_tuple_form_still_runs(rng):
    graph = run_passes(_graph(rng), [("fold_batchnorm", fold_batchnorm)])
    assert [n.op for n in graph.nodes if n.op == "BatchNormalization"] == []


def _bn_two_consumers(rng):
    """Conv -> (BatchNormalization, Relu): the BN's input feeds two nodes, so it stays."""
    c = 4
    inits = [("w", rng.normal(0, 0.5, (c, 2, 3, 3)).astype(np.float32)),
             ("g", np.ones(c, np.float32)), ("be", np.zeros(c, np.float32)),
             ("m", np.zeros(c, np.float32)), ("v", np.ones(c, np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"],
                              name="bn3"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["n", "r"], ["y"], name="add")]
    return make_model(nodes, [vi("x", ["N", 2, 6, 6])], [vi("y", ["N", c, 6, 6])], inits)


def test_skip_reason_recorded_and_logged(rng, caplog):
    fold = FunctionPass("fold_batchnorm", fold_batchnorm)
    x = rng.normal(size=(2, 2, 6, 6)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger="onnx_rmpe"):
        check_pass(fold, _bn_two_consumers(rng), x, expect_changed=False)
    assert fold.skipped == ["BatchNormalization bn3 kept: its input feeds 2 consumers"]
    assert "BatchNormalization bn3 kept: its input feeds 2 consumers" in caplog.text


def test_fold_batchnorm_positive(rng):
    x = rng.normal(size=(3, 2, 6, 6)).astype(np.float32)
    out = check_pass(FunctionPass("fold_batchnorm", fold_batchnorm), conv_bn_relu(rng), x,
                     expect_changed=True)
    assert "BatchNormalization" not in [n.op_type for n in out.graph.node]


def test_ensures_runs_only_when_checking(rng):
    def bad(graph):  # claims to be relu_to_qcfs but leaves the ReLU
        return PassResult(graph, False)
    liar = FunctionPass("relu_to_qcfs", bad, ensures=invariants.after_relu_to_qcfs)
    Sequential(liar, check=False)(_graph(rng))  # not checked: no error
    with pytest.raises(PassError) as err:
        Sequential(liar, check=True)(_graph(rng))
    assert isinstance(err.value.__cause__, InvariantError)
    assert "ReLU-like node(s) remain" in str(err.value)


def test_check_env_turns_checks_on(rng, monkeypatch):
    liar = FunctionPass("relu_to_qcfs", lambda g: PassResult(g, False),
                        ensures=invariants.after_relu_to_qcfs)
    monkeypatch.setenv("ONNX_RMPE_CHECK", "1")
    with pytest.raises(PassError):
        Sequential(liar)(_graph(rng))
    monkeypatch.setenv("ONNX_RMPE_CHECK", "0")
    Sequential(liar)(_graph(rng))


def test_pipeline_invariants_hold(rng):
    graph = Sequential(*prepare_passes(), check=True)(_graph(rng)).graph
    name = next(n.name for n in graph.nodes if n.op == "Relu")
    graph = Sequential(*qcfs_passes(thresholds={name: 1.5}, levels=4), check=True)(graph).graph
    assert [n.op for n in graph.nodes].count("QCFS") == 1


def test_relu_to_qcfs_and_maxpool_through_kit(rng):
    model = conv_bn_relu(rng, bn=False)
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type}_{i}"
    x = rng.normal(size=(2, 2, 6, 6)).astype(np.float32)
    name = next(n.name for n in model.graph.node if n.op_type == "Relu")
    # thresholds above every activation: QCFS with many levels is close to ReLU
    big = FunctionPass("relu_to_qcfs", relu_to_qcfs, ensures=invariants.after_relu_to_qcfs,
                       thresholds={name: 50.0}, levels=4096)
    check_pass(big, model, x, expect_changed=True, atol=0.1)
    pools = FunctionPass("maxpool_reorder", maxpool_reorder,
                         ensures=invariants.after_maxpool_reorder)
    check_pass(pools, model, x, expect_changed=False)  # no QCFS -> MaxPool pair


def _relu_bn_padded_conv(rng):
    """Relu -> BatchNormalization -> Conv with zero padding: BN cannot fold forward."""
    c = 3
    inits = [("w", rng.normal(0, 0.5, (c, 2, 3, 3)).astype(np.float32)),
             ("g", rng.uniform(0.5, 2, 2).astype(np.float32)),
             ("be", rng.normal(size=2).astype(np.float32)),
             ("m", rng.normal(size=2).astype(np.float32)), ("v", np.ones(2, np.float32))]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("BatchNormalization", ["r", "g", "be", "m", "v"], ["n"],
                              name="bn_after"),
             helper.make_node("Conv", ["n", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    return make_model(nodes, [vi("x", ["N", 2, 6, 6])], [vi("y", ["N", c, 6, 6])], inits)


def _floor_not_qcfs(rng):
    """Floor(x * 3) / 3 is a quantizer without a clip: not a QCFS activation."""
    inits = [("three", np.array(3.0, np.float32))]
    nodes = [helper.make_node("Mul", ["x", "three"], ["u"], name="scale"),
             helper.make_node("Floor", ["u"], ["f"], name="floor"),
             helper.make_node("Div", ["f", "three"], ["y"], name="down")]
    return make_model(nodes, [vi("x", ["N", 4])], [vi("y", ["N", 4])], inits)


def _relu_readout(rng):
    inits = [("w", rng.normal(size=(4, 3)).astype(np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w"], ["z"], name="fc"),
             helper.make_node("Relu", ["z"], ["y"], name="relu_out")]
    return make_model(nodes, [vi("x", ["N", 4])], [vi("y", ["N", 3])], inits)


@pytest.mark.parametrize("case", ["bn_forward", "floor", "readout"])
def test_rules_that_do_not_apply_say_why(rng, case):
    from onnx_rmpe.passes.fold_batchnorm_forward import fold_batchnorm_forward
    from onnx_rmpe.passes.recognize_qcfs import recognize_qcfs

    if case == "bn_forward":
        model, pass_ = _relu_bn_padded_conv(rng), FunctionPass("fwd", fold_batchnorm_forward)
        x, want = rng.normal(size=(2, 2, 6, 6)).astype(np.float32), \
            "BatchNormalization bn_after kept as a per-channel affine: Conv conv cannot absorb"
    elif case == "floor":
        model, pass_ = _floor_not_qcfs(rng), FunctionPass("recognize", recognize_qcfs)
        x, want = rng.normal(size=(2, 4)).astype(np.float32), \
            "Floor floor kept: not a QCFS activation"
    else:
        model = _relu_readout(rng)
        pass_ = FunctionPass("relu_to_qcfs", relu_to_qcfs, thresholds={})
        x, want = None, "relu_out kept as part of the readout"
    if x is None:
        pass_(to_graph(prepare(model)))
    else:
        check_pass(pass_, model, x, expect_changed=False)
    assert len(pass_.skipped) == 1 and pass_.skipped[0].startswith(want), pass_.skipped
