"""Real published architectures (the ONNX model zoo's light models in the onnx wheel) and
the op rules they need: Sum, softmax behind shape ops, old opsets, LRN, a ReLU on the
output, identity max pools, BatchNormalization after a ReLU, per-channel Mul/Add."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from onnx import helper

from onnx_rmpe.calibration import CLIP_LEVELS, qcfs_with_levels
from onnx_rmpe.conversion import build_qcfs, convert
from onnx_rmpe.data import Dataset
from onnx_rmpe.errors import UnsupportedOpError
from onnx_rmpe.inspect import inspect_model
from onnx_rmpe.lightzoo import light_model
from onnx_rmpe.modelio import prepare, to_graph, to_model
from onnx_rmpe.passes.readout import sink_readout
from onnx_rmpe.passes.simplify_ops import simplify_ops
from tests.graphs import make_model, vi
from tests.helpers import assert_numerically_equal, run


def _rel_errors(model: onnx.ModelProto, x: np.ndarray, T: int, steps, **kw) -> list[float]:
    """Distance of the SNN's running output after each of ``steps`` to the clip ANN's.

    One conversion at ``T`` without RMPE: the running mean after step t of an
    uncalibrated SNN is the output of the SNN with t steps. Distance: ``|y_snn - y_ann|``
    over ``|y_ann - mean class score|`` (random deep nets give no meaningful top-1).
    """
    result = convert(model, T=T, calib=x, rmpe=False, threads=1, **kw)
    want = run(qcfs_with_levels(result.qcfs, CLIP_LEVELS), x)[0].reshape(len(x), -1)
    name = result.snn.graph.output[0].name
    per_step = run(result.snn, x, [f"{name}_per_step"])[0].reshape(T, len(x), -1)
    scale = np.linalg.norm(want - want.mean(-1, keepdims=True))
    return [float(np.linalg.norm(per_step[t - 1] - want) / scale) for t in steps]


@pytest.mark.parametrize("name", ["resnet50", "squeezenet", "shufflenet", "inception_v2"])
def test_light_zoo_model_converts_and_error_falls_with_T(name):
    """The model-zoo nets convert (Sum, softmax behind shape ops, opset 9 upgrade) and the
    SNN approaches the clip ANN as T grows: at T=16 well below T=2 (measured ratios
    0.27-0.49 at 32x32, 2 inputs; random deep nets are chaotic, so only a clear fall is
    asserted)."""
    model = light_model(name, size=32, softmax=False)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    err2, err16 = _rel_errors(model, x, 16, (2, 16))
    assert err16 < 0.7 * err2, (err2, err16)


def test_light_model_with_softmax_converts_with_rmpe():
    """SqueezeNet as shipped (opset 9, plain Softmax output, which the upgrade to opset 17
    wraps in Flatten/Reshape): converts with RMPE; the output keeps its name. Op coverage
    is the point: the searched thresholds, not the default's refinement (about 20 more SNN
    runs of a 26-layer net, 5x this test's time), which the digits tests cover."""
    model = light_model("squeezenet", size=32)
    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)
    result = convert(model, T=4, calib=x, threads=1, thresholds="search")
    assert [o.name for o in result.snn.graph.output] == ["softmaxout_1", "softmaxout_1_per_step"]
    probs = run(result.snn, x)[0].reshape(len(x), -1)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    assert result.calibration is not None and len(result.calibration.layers) == 26


def test_lrn_refused_with_the_fix_and_shown_by_inspect():
    model = light_model("inception_v1")
    with pytest.raises(UnsupportedOpError) as err:
        build_qcfs(model, Dataset(np.zeros((1, 3, 224, 224), np.float32)))
    text = str(err.value)
    assert text.count("(LRN)") == 2 and "remove the LRN layers" in text
    blockers = inspect_model(model).blockers
    assert len(blockers) == 2 and all("LRN" in b and "fix:" in b for b in blockers)


# --- unit tests of the op rules --------------------------------------------------------

def _conv_net(rng, tail_nodes, tail_inits, out_shape, *, opset=17, mid=None, cin=2, c=4):
    """x[N,2,6,6] -> Conv(3x3) -> Relu -> [mid nodes on 'a' -> 'm'] -> Conv(1x1, c) -> tail."""
    inits = [("w", rng.normal(0, 0.5, (c, cin, 3, 3)).astype(np.float32)),
             ("w2", rng.normal(0, 0.5, (c, c, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["a"], name="relu1")]
    src = "a"
    if mid is not None:
        mid_nodes, mid_inits = mid
        nodes += mid_nodes
        inits += mid_inits
        src = "m"
    nodes.append(helper.make_node("Conv", [src, "w2"], ["c2"], name="conv2"))
    nodes += tail_nodes
    inits += tail_inits
    return make_model(nodes, [vi("x", ["N", cin, 6, 6])], [vi("y", out_shape)], inits,
                      opset=opset)


def _graph_of(model):
    return to_graph(prepare(model))


def test_sum_becomes_add_chain(rng):
    tail = [helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("Sum", ["c2", "r2", "c2"], ["s"], name="join"),
            helper.make_node("GlobalAveragePool", ["s"], ["g"]),
            helper.make_node("Flatten", ["g"], ["y"])]
    model = _conv_net(rng, tail, [], ["N", 4], opset=9)
    graph, changed = simplify_ops(_graph_of(model))
    assert changed
    ops = [n.op for n in graph.nodes]
    assert "Sum" not in ops and ops.count("Add") == 2
    assert_numerically_equal(model, to_model(graph), rng.normal(size=(3, 2, 6, 6)).astype(
        np.float32))


def test_simplify_ops_negative_case(rng):
    tail = [helper.make_node("MaxPool", ["c2"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
            helper.make_node("GlobalAveragePool", ["p"], ["g"]),
            helper.make_node("Flatten", ["g"], ["y"])]
    graph, changed = simplify_ops(_graph_of(_conv_net(rng, tail, [], ["N", 4])))
    assert not changed and [n.op for n in graph.nodes].count("MaxPool") == 1


def test_identity_maxpool_removed(rng):
    tail = [helper.make_node("MaxPool", ["c2"], ["p"], kernel_shape=[1, 1], strides=[1, 1]),
            helper.make_node("MaxPool", ["p"], ["p2"], kernel_shape=[1, 1], strides=[2, 2]),
            helper.make_node("GlobalAveragePool", ["p2"], ["g"]),
            helper.make_node("Flatten", ["g"], ["y"])]
    model = _conv_net(rng, tail, [], ["N", 4])
    graph, changed = simplify_ops(_graph_of(model))
    pools = [n for n in graph.nodes if n.op == "MaxPool"]
    assert changed and len(pools) == 1 and list(pools[0].attrs["strides"]) == [2, 2]
    assert_numerically_equal(model, to_model(graph), rng.normal(size=(3, 2, 6, 6)).astype(
        np.float32))


def test_softmax_behind_shape_ops_moves_to_output(rng):
    """Flatten -> Softmax -> Reshape([N, C, 1, 1]): the softmax ends up on the output."""
    tail = [helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Softmax", ["f"], ["s"], name="prob", axis=1),
            helper.make_node("Reshape", ["s", "shape"], ["y"])]
    model = _conv_net(rng, tail, [("shape", np.array([-1, 4, 1, 1], np.int64))], ["N", 4, 1, 1])
    graph, changed = sink_readout(_graph_of(model))
    assert changed
    assert graph.outputs[0].inputs[0].op == "Softmax" and graph.outputs[0].inputs[0].name == "prob"
    assert_numerically_equal(model, to_model(graph), rng.normal(size=(3, 2, 6, 6)).astype(
        np.float32))


def test_softmax_over_a_map_is_not_moved_and_is_refused_by_name(rng):
    """Softmax over channels at every pixel, then Flatten: not a readout; refused by name."""
    tail = [helper.make_node("Softmax", ["c2"], ["s"], name="pixel_softmax", axis=1),
            helper.make_node("Flatten", ["s"], ["y"])]
    model = _conv_net(rng, tail, [], ["N", 144])
    graph, changed = sink_readout(_graph_of(model))
    assert not changed
    with pytest.raises(UnsupportedOpError, match="pixel_softmax"):
        build_qcfs(model, Dataset(rng.normal(size=(4, 2, 6, 6)).astype(np.float32)))


def test_old_opset_softmax_upgrade_creates_no_blocker_and_names_user_nodes(rng):
    tail = [helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
            helper.make_node("Softmax", ["g"], ["y"], name="prob", axis=1)]
    model = _conv_net(rng, tail, [], ["N", 4, 1, 1], opset=9)
    x = rng.normal(size=(8, 2, 6, 6)).astype(np.float32)
    result = convert(model, T=8, calib=x, rmpe=False, threads=1)
    probs = run(result.snn, x)[0]
    assert probs.shape == (8, 4, 1, 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    leaky = _conv_net(rng, tail, [], ["N", 4, 1, 1], opset=9)
    leaky.graph.node[1].op_type = "LeakyRelu"
    with pytest.raises(UnsupportedOpError) as err:
        build_qcfs(leaky, Dataset(x))
    assert "node 'relu1' (LeakyRelu)" in str(err.value) and "upgrade" not in str(err.value)


def _relu_head(rng, relu_out: bool):
    """x[N,6] -> Gemm -> Relu -> Gemm [-> Relu] -> y[N,3]."""
    inits = [("w1", rng.normal(0, 0.6, (6, 8)).astype(np.float32)),
             ("w2", rng.normal(0, 0.6, (8, 3)).astype(np.float32)),
             ("b2", np.array([0.3, -0.2, 0.1], np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["z" if relu_out else "y"], name="fc2")]
    if relu_out:
        nodes.append(helper.make_node("Relu", ["z"], ["y"], name="relu_out"))
    return make_model(nodes, [vi("x", ["N", 6])], [vi("y", ["N", 3])], inits)


def test_relu_on_output_is_readout(rng, caplog):
    """A ReLU on the logits is applied to the time-averaged logits, not made a neuron:
    the SNN's output is exactly ReLU of the same SNN's logits without it."""
    x = rng.normal(size=(64, 6)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="onnx_rmpe"):
        with_relu = convert(_relu_head(np.random.default_rng(5), True), T=4, calib=x,
                            rmpe=False)
    assert list(with_relu.thresholds) == ["relu1"]
    assert with_relu.readout_activations == ["relu_out"]
    assert any("relu_out" in r.getMessage() and "readout" in r.getMessage()
               for r in caplog.records)
    plain = convert(_relu_head(np.random.default_rng(5), False), T=4, calib=x, rmpe=False)
    assert with_relu.thresholds == plain.thresholds
    got, per_step = run(with_relu.snn, x)
    logits, logits_steps = run(plain.snn, x)
    np.testing.assert_allclose(got, np.maximum(logits, 0), atol=1e-5)
    np.testing.assert_allclose(per_step, np.maximum(logits_steps, 0), atol=1e-5)
    assert (got > 0).any() and (logits < 0).any()


def _bn_params(rng, c: int, prefix: str) -> list:
    return [(f"{prefix}g", rng.uniform(0.5, 1.5, c).astype(np.float32)),
            (f"{prefix}b", rng.normal(0, 0.3, c).astype(np.float32)),
            (f"{prefix}m", rng.normal(0, 0.3, c).astype(np.float32)),
            (f"{prefix}v", rng.uniform(0.5, 1.5, c).astype(np.float32))]


def _bn_after_relu(rng):
    """Conv -> Relu -> BN -> Conv(1x1, no padding) -> Relu -> GAP -> Flatten -> Gemm."""
    mid = ([helper.make_node("BatchNormalization", ["a", "bng", "bnb", "bnm", "bnv"], ["m"],
                             name="bn_after_relu")], _bn_params(rng, 4, "bn"))
    inits = [("fc", rng.normal(0, 0.5, (4, 3)).astype(np.float32))]
    tail = [helper.make_node("Relu", ["c2"], ["r2"]),
            helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["y"])]
    return _conv_net(rng, tail, inits, ["N", 3], mid=mid)


def _bn_before_gemm(rng, trans_b: int):
    """x[N,6] -> Gemm -> Relu -> BN -> Gemm(transB) -> y[N,3]."""
    w2 = rng.normal(0, 0.6, (3, 8) if trans_b else (8, 3)).astype(np.float32)
    inits = [("w1", rng.normal(0, 0.6, (6, 8)).astype(np.float32)), ("w2", w2),
             ("c2", np.array([0.1, 0.2, -0.1], np.float32))] + _bn_params(rng, 8, "bn")
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("BatchNormalization", ["a", "bng", "bnb", "bnm", "bnv"], ["n"],
                              name="bn_after_relu"),
             helper.make_node("Gemm", ["n", "w2", "c2"], ["y"], name="fc2", transB=trans_b,
                              alpha=0.5, beta=2.0)]
    return make_model(nodes, [vi("x", ["N", 6])], [vi("y", ["N", 3])], inits)


@pytest.mark.parametrize("kind", ["conv", "gemm", "gemm_transB"])
def test_batchnorm_after_relu_folds_forward(kind, rng):
    from onnx_rmpe.passes.fold_batchnorm_forward import fold_batchnorm_forward
    model = _bn_after_relu(rng) if kind == "conv" else _bn_before_gemm(rng, int(kind != "gemm"))
    graph, changed = fold_batchnorm_forward(_graph_of(model))
    assert changed and "BatchNormalization" not in [n.op for n in graph.nodes]
    shape = (5, 2, 6, 6) if kind == "conv" else (5, 6)
    assert_numerically_equal(model, to_model(graph), rng.normal(size=shape).astype(np.float32),
                             atol=1e-4)


def test_batchnorm_before_padded_conv_stays_and_runs_on_spikes(rng):
    """BN -> Conv(pad 1) is not folded (the border would change); the SNN runs it on
    spikes, exact in the rate domain: its error to the clip ANN falls with T."""
    from onnx_rmpe.passes.fold_batchnorm_forward import fold_batchnorm_forward
    inits = [("w3", rng.normal(0, 0.4, (4, 4, 3, 3)).astype(np.float32)),
             ("fc", rng.normal(0, 0.5, (4, 3)).astype(np.float32))] + _bn_params(rng, 4, "bn")
    tail = [helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("BatchNormalization", ["r2", "bng", "bnb", "bnm", "bnv"], ["n2"],
                             name="bn_after_relu"),
            helper.make_node("Conv", ["n2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c3"], ["r3"]),
            helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["y"])]
    model = _conv_net(rng, tail, inits, ["N", 3])
    graph, changed = fold_batchnorm_forward(_graph_of(model))
    assert not changed and "BatchNormalization" in [n.op for n in graph.nodes]
    x = rng.normal(size=(64, 2, 6, 6)).astype(np.float32)
    err2, err64 = _rel_errors(model, x, 64, (2, 64), thresholds="percentile")
    assert err64 < 0.3 * err2 and err64 < 0.15, (err2, err64)


def test_per_channel_mul_add_on_spikes(rng):
    """Mul/Add by per-channel constants after a ReLU (tf2onnx's BatchNormalization) run on
    spikes: the SNN's error to the clip ANN falls with T."""
    mid = ([helper.make_node("Mul", ["a", "scale"], ["ms"], name="bn_mul"),
            helper.make_node("Add", ["ms", "shift"], ["m"], name="bn_add")],
           [("scale", rng.uniform(0.5, 1.5, (1, 4, 1, 1)).astype(np.float32)),
            ("shift", rng.normal(0, 0.3, (1, 4, 1, 1)).astype(np.float32))])
    inits = [("fc", rng.normal(0, 0.5, (4, 3)).astype(np.float32))]
    tail = [helper.make_node("Relu", ["c2"], ["r2"]),
            helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["y"])]
    model = _conv_net(rng, tail, inits, ["N", 3], mid=mid)
    x = rng.normal(size=(64, 2, 6, 6)).astype(np.float32)
    err2, err64 = _rel_errors(model, x, 64, (2, 64), thresholds="percentile")
    assert err64 < 0.3 * err2 and err64 < 0.15, (err2, err64)


def test_thresholds_do_not_depend_on_batch_size(rng):
    model = _relu_head(np.random.default_rng(3), False)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    small = build_qcfs(model, Dataset(x), batch_size=7)[1]
    large = build_qcfs(model, Dataset(x), batch_size=200)[1]
    assert small.keys() == large.keys()
    for name in small:
        assert small[name] == pytest.approx(large[name], rel=1e-5)


def test_save_qcfs_writes_the_rmpe_target_too(rng, tmp_path):
    from onnx_rmpe.modelio import get_metadata, load_model
    x = rng.normal(size=(32, 6)).astype(np.float32)
    result = convert(_relu_head(np.random.default_rng(3), False), T=16, calib=x, levels=4,
                     save_qcfs=tmp_path / "ann.qcfs.onnx", threads=1)
    assert result.qcfs_path == tmp_path / "ann.qcfs.onnx"
    assert result.target_path == tmp_path / "ann.qcfs.target.onnx"
    qcfs, target = load_model(result.qcfs_path), load_model(result.target_path)
    assert "L=4" in get_metadata(qcfs)["onnx_rmpe.role"]
    assert "RMPE target" in get_metadata(target)["onnx_rmpe.role"]
    assert get_metadata(target)["onnx_rmpe.levels"] == "16"
    levels = {a.i for n in target.graph.node for a in n.attribute if a.name == "levels"}
    assert levels == {16}


def test_absurd_thresholds_and_silent_layers_warn(rng, caplog):
    model = _relu_head(np.random.default_rng(3), False)
    for init in model.graph.initializer:
        if init.name == "w1":
            init.CopyFrom(onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(init) * np.float32(1e8), "w1"))
    x = rng.normal(size=(32, 6)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="onnx_rmpe"):
        build_qcfs(model, Dataset(x))
    assert any("relu1" in r.getMessage() and "outside" in r.getMessage()
               for r in caplog.records)
    from onnx_rmpe.calibration.check import _warn_silent
    from onnx_rmpe.calibration.results import LayerReport
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnx_rmpe"):
        _warn_silent([LayerReport("quiet_layer", 8, 0.1, 0.1, 0.0, 0.0),
                      LayerReport("busy_layer", 8, 0.1, 0.1, 0.2, 0.0)])
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "quiet_layer" in text and "busy_layer" not in text


def test_third_party_loggers_quiet_unless_verbose(capfd):
    from onnx_graphsurgeon.logger import G_LOGGER

    from onnx_rmpe.logs import quiet_dependencies
    try:
        quiet_dependencies(False)
        G_LOGGER.warning("graphsurgeon says hello")
        assert "graphsurgeon says hello" not in "".join(capfd.readouterr())
        quiet_dependencies(True)
        G_LOGGER.warning("graphsurgeon says hello")
        assert "graphsurgeon says hello" in "".join(capfd.readouterr())
    finally:
        quiet_dependencies(False)


def test_spike_cache_round_trip_in_bits(tmp_path):
    from onnx_rmpe.runtime.spike_cache import SpikeStore
    store = SpikeStore(str(tmp_path))
    spikes = np.random.default_rng(0).random((4, 10, 3, 5, 5)) < 0.3
    cache = store.new(spikes.shape)
    cache[:, 0:6] = spikes[:, 0:6]
    cache[:, 6:10] = spikes[:, 6:10]
    np.testing.assert_array_equal(cache[:, 2:9], spikes[:, 2:9])
    assert store.peak_bytes == 4 * 10 * 10  # 75 bits per sample -> 10 bytes
    store.free(cache)
    assert store.live == 0 and not list(tmp_path.iterdir())


def test_cli_lrn_model_refused_in_one_line_and_inspected(tmp_path):
    from click.testing import CliRunner

    from onnx_rmpe.cli.main import cli
    path = tmp_path / "inception_v1.onnx"
    onnx.save(light_model("inception_v1"), str(path))
    np.savez(tmp_path / "calib.npz", x=np.zeros((1, 3, 224, 224), np.float32))
    out = tmp_path / "snn.onnx"
    result = CliRunner().invoke(cli, ["convert", str(path), "--T", "4", "--calib",
                                      str(tmp_path / "calib.npz"), "-o", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert "Traceback" not in result.output and "remove the LRN layers" in result.output
    shown = CliRunner().invoke(cli, ["inspect", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "blocks conversion: 2 node(s)" in shown.output and "(LRN)" in shown.output


# --- cost bounds of the default steps at ImageNet size ---------------------------------

def test_refine_skipped_above_its_work_budget(resnet, digits_data, monkeypatch, caplog):
    """The default refinement (hundreds of SNN passes) is skipped, with a log line, when its
    estimated MACs exceed ``refine.MAX_MACS``; the search and RMPE still run, and the weight
    reconstruction (``auto``) is skipped with it. Just under and just over the estimate."""
    from onnx_rmpe import refine
    from onnx_rmpe.runtime.synops import model_macs

    (x, _), _ = digits_data
    calib = Dataset(x[:32])
    plain = convert(resnet, T=2, calib=calib.x, thresholds="percentile", rmpe=False,
                    threads=1)
    layers = len(plain.thresholds)
    macs = sum(model_macs(plain.qcfs, calib.x[:1]).values())
    need = refine.estimated_macs(layers, macs, len(calib), 2)
    assert need == 2 * (1 + 4 * layers) * 2 * 32 * macs > 0
    monkeypatch.setattr(refine, "MAX_MACS", need * 1.01)
    assert refine.affordable(plain.qcfs, calib, T=2, layers=layers)
    monkeypatch.setattr(refine, "MAX_MACS", need * 0.99)
    with caplog.at_level(logging.INFO, logger="onnx_rmpe.refine"):
        assert not refine.affordable(plain.qcfs, calib, T=2, layers=layers)
        result = convert(resnet, T=2, calib=calib.x, threads=1)
    assert "refine skipped" in caplog.text and "MAX_MACS" in caplog.text
    assert result.threshold_refine == [] and result.reconstruction is None
    assert len(result.threshold_search) == layers and result.calibration is not None


def test_reconstruct_bounded_chunks_and_columns(rng, monkeypatch):
    """Weight reconstruction at ImageNet size: im2col chunks bounded by ``COL_BYTES`` (one
    sample a chunk here) give the same fit to float64 rounding; a layer with more than
    ``MAX_COLUMNS`` inputs keeps its weights (VGG-19's 25088-input Gemm), with its reason."""
    from onnx_rmpe import reconstruct as rec
    from onnx_rmpe.pipeline import build_qcfs, qcfs_to_snn
    from onnx_rmpe.thresholds import relu_reference

    tail = [helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c3"], ["g"]),
            helper.make_node("Flatten", ["g"], ["y"])]
    w3 = rng.normal(0, 0.5, (3, 4, 3, 3)).astype(np.float32)
    model = _conv_net(rng, tail, [("w3", w3)], ["N", 3])
    data = Dataset(rng.normal(size=(12, 2, 6, 6)).astype(np.float32))
    qcfs, _ = build_qcfs(model, data, threads=1)
    snn, relu = qcfs_to_snn(qcfs, T=2), relu_reference(qcfs)

    def weights(m):
        return {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}

    whole, report = rec.reconstruct(snn, relu, data, T=2, threads=1)
    assert [f.name for f in report.layers] == ["conv2", "conv3"]
    assert all(f.error_after < f.error_before for f in report.layers)
    monkeypatch.setattr(rec, "COL_BYTES", 1)  # one sample a chunk
    chunked, _ = rec.reconstruct(snn, relu, data, T=2, threads=1)
    for name, w in weights(whole).items():
        np.testing.assert_allclose(weights(chunked)[name], w, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(rec, "MAX_COLUMNS", 4 * 9)  # conv3 has 4 * 3 * 3 + 1 columns
    bounded, small = rec.reconstruct(snn, relu, data, T=2, threads=1)
    assert [f.name for f in small.layers] == ["conv2"]
    w3_name = next(n.input[1] for n in snn.graph.node if n.name == "conv3")
    np.testing.assert_array_equal(weights(bounded)[w3_name], weights(snn)[w3_name])
    assert not np.array_equal(weights(whole)[w3_name], weights(snn)[w3_name])
