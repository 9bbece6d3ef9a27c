"""The SNN report: exact SynOps on tiny graphs, firing rates, energy, PNGs, bounded memory."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_rmpe
from onnx_rmpe.errors import ConversionError
from onnx_rmpe.runtime import activity
from onnx_rmpe.runtime.neurons import if_reference
from onnx_rmpe.runtime.statistics import expose_outputs
from onnx_rmpe.runtime.synops import tensor_shapes
from tests.graphs import make_model, vi
from tests.helpers import run

T = 4
R_S2 = np.array([1, 2, 1, 2, 1])   # 3x3 kernel, stride 2, pad 1 on 5 -> 3: hits per row
R_S1 = np.array([2, 3, 3, 2])      # 3x3 kernel, stride 1, pad 1 on 4 -> 4


def _w(rng, *shape, scale=0.6):
    return rng.normal(0, scale, shape).astype(np.float32)


def chain_model(rng) -> tuple[onnx.ModelProto, dict]:
    """x[2,5,5] -conv3x3-> a[4,5,5] -conv1x1-> b[3,5,5] -conv3x3 s2 p1-> c[5,3,3] -Gemm-> y."""
    w1 = _w(rng, 3, 4, 1, 1)
    w1[0, 1] = 0.0                                   # channel 1 reaches 2 outputs, not 3
    w2 = _w(rng, 5, 3, 3, 3)
    w2[:, 2, 0, 0] = 0.0                             # channel 2: top-left tap unused
    fc = _w(rng, 10, 45, scale=0.3)
    fc[:, :7] = 0.0
    fc[3:, 7] = 0.0                                  # feature 7 reaches 3 outputs
    inits = [("w0", _w(rng, 4, 2, 3, 3)), ("b0", np.full(4, 0.3, np.float32)), ("w1", w1),
             ("b1", np.full(3, 0.2, np.float32)), ("w2", w2), ("fc", fc)]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("Relu", ["c0"], ["a"], name="A"),
             helper.make_node("Conv", ["a", "w1", "b1"], ["c1"], name="conv1x1"),
             helper.make_node("Relu", ["c1"], ["b"], name="B"),
             helper.make_node("Conv", ["b", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2],
                              name="conv3x3s2"),
             helper.make_node("Relu", ["c2"], ["c"], name="C"),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc")]
    model = make_model(nodes, [vi("x", ["N", 2, 5, 5])], [vi("y", ["N", 10])], inits)
    return model, dict(inits)


def residual_model(rng) -> tuple[onnx.ModelProto, dict]:
    """a = relu(conv x); b = relu(conv3x3(a) + a); y = Gemm(Flatten(AvgPool2x2(a + b)))."""
    fc = _w(rng, 10, 16, scale=0.4)
    fc[5:, :4] = 0.0                                 # pooled channel 0 reaches 5 outputs
    inits = [("w0", _w(rng, 4, 2, 3, 3)), ("b0", np.full(4, 0.3, np.float32)),
             ("w1", _w(rng, 4, 4, 3, 3, scale=0.3)), ("fc", fc)]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("Relu", ["c0"], ["a"], name="A"),
             helper.make_node("Conv", ["a", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Add", ["c1", "a"], ["s"], name="shortcut"),
             helper.make_node("Relu", ["s"], ["b"], name="B"),
             helper.make_node("Add", ["a", "b"], ["ab"], name="join"),
             helper.make_node("AveragePool", ["ab"], ["p"], kernel_shape=[2, 2], strides=[2, 2],
                              name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc")]
    model = make_model(nodes, [vi("x", ["N", 2, 4, 4])], [vi("y", ["N", 10])], inits)
    return model, dict(inits)


def reference_spikes(snn: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Spike counts ``[T, N, ...]`` of every IF layer from the numpy reference simulation."""
    graph = snn.graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    ifs = [n for n in graph.node if n.op_type == "IFNeuron"]
    currents = run(expose_outputs(snn, [n.input[0] for n in ifs]), x,
                   [n.input[0] for n in ifs])
    out = {}
    for node, current in zip(ifs, currents):
        x_tn = current.reshape(T, len(x), *current.shape[1:])
        spikes, _ = if_reference(x_tn, inits[node.input[1]], inits[node.input[2]])
        out[node.name] = spikes
    return out


def _convert(model, x):
    return onnx_rmpe.convert(model, T=T, calib=x, levels=T, rmpe=False,
                              reconstruct="none").snn


def _layer(result, name):
    return next(la for la in result.linear_layers if la.name == name)


@pytest.fixture(scope="module")
def chain():
    rng = np.random.default_rng(1)
    model, w = chain_model(rng)
    x = rng.uniform(0, 1, (24, 2, 5, 5)).astype(np.float32)
    y = rng.integers(0, 10, 24)
    snn = _convert(model, x)
    return snn, w, x, y, reference_spikes(snn, x)


def test_synops_1x1_3x3_stride2_gemm_by_hand(chain):
    snn, w, x, y, spikes = chain
    result = onnx_rmpe.report(snn, (x, y), batch_size=7)
    n = len(x)
    a = spikes["A"].sum((0, 1))                       # [4, 5, 5] spikes per neuron
    fan_1x1 = (w["w1"] != 0).sum(0)[:, 0, 0]          # outputs per input channel: 3,2,3,3
    assert list(fan_1x1) == [3, 2, 3, 3]
    assert _layer(result, "conv1x1").synops == pytest.approx((a * fan_1x1[:, None, None]).sum()
                                                             / n, rel=1e-12)
    b = spikes["B"].sum((0, 1))                       # [3, 5, 5]
    taps = np.zeros((3, 5, 5), np.int64)             # outputs each input neuron reaches
    for ch, yy, xx in np.ndindex(3, 5, 5):
        for o, ky, kx in np.ndindex(5, 3, 3):       # output row = (y + pad - ky) / stride
            oy, ox = yy + 1 - ky, xx + 1 - kx
            if w["w2"][o, ch, ky, kx] != 0 and oy % 2 == 0 and ox % 2 == 0 \
                    and 0 <= oy // 2 <= 2 and 0 <= ox // 2 <= 2:
                taps[ch, yy, xx] += 1
    np.testing.assert_array_equal(taps[0], 5 * np.outer(R_S2, R_S2))
    assert taps[2, 1, 1] == 5 * 2 * 2 - 5           # the zeroed tap reaches (0, 0) from (1, 1)
    assert _layer(result, "conv3x3s2").synops == pytest.approx((b * taps).sum() / n,
                                                               rel=1e-12)
    c = spikes["C"].sum((0, 1)).reshape(-1)           # [45] spikes per feature
    assert _layer(result, "fc").synops == pytest.approx(c @ (w["fc"] != 0).sum(0) / n,
                                                        rel=1e-12)
    first = _layer(result, "conv0")
    assert first.inputs == "static" and first.synops == 0
    assert first.macs == 4 * 25 * 2 * 9
    assert result.ann_macs == 4 * 25 * 2 * 9 + 3 * 25 * 4 + 5 * 9 * 3 * 9 + 10 * 45


def test_synops_avgpool_and_residual_add_by_hand():
    rng = np.random.default_rng(2)
    model, w = residual_model(rng)
    x = rng.uniform(0, 1, (16, 2, 4, 4)).astype(np.float32)
    snn = _convert(model, x)
    spikes = reference_spikes(snn, x)
    result = onnx_rmpe.report(snn, x, batch_size=5)
    n = len(x)
    a, b = spikes["A"].sum((0, 1)), spikes["B"].sum((0, 1))    # [4, 4, 4] each
    conv1 = _layer(result, "conv1")
    assert conv1.sources == ["A"]
    assert conv1.synops == pytest.approx((a * 4 * np.outer(R_S1, R_S1)).sum() / n, rel=1e-12)
    shortcut = _layer(result, "B shortcut")            # A's spikes enter B's current directly
    assert shortcut.synops == pytest.approx(a.sum() / n, rel=1e-12)
    assert shortcut.ann_adds == 64
    fc_nnz = (w["fc"] != 0).sum(0).reshape(4, 2, 2)    # per pooled (channel, y, x)
    fan = np.repeat(np.repeat(fc_nnz, 2, axis=1), 2, axis=2)   # each spike: its 2x2 window
    fc = _layer(result, "fc")
    assert sorted(fc.sources) == ["A", "B"]
    assert fc.synops == pytest.approx(((a + b) * fan).sum() / n, rel=1e-12)
    assert fan[0].max() == 5 and fan[1].min() == 10


def test_firing_rates_match_reference_simulation(chain):
    snn, _, x, y, spikes = chain
    result = onnx_rmpe.report(snn, (x, y), batch_size=5)
    assert [s.name for s in result.spiking_layers] == ["A", "B", "C"]
    for stats in result.spiking_layers:
        s = spikes[stats.name]                        # [T, N, ...] bool
        per_sample = s.sum(0).reshape(len(x), -1)
        assert stats.neurons == per_sample.shape[1]
        assert stats.spikes_per_sample * len(x) == pytest.approx(s.sum(), abs=1e-6)
        assert stats.firing_rate == pytest.approx(s.mean(), rel=1e-12)
        assert stats.silent_fraction == pytest.approx((per_sample == 0).mean(), rel=1e-12)
        assert stats.saturated_fraction == pytest.approx((per_sample == T).mean(), rel=1e-12)
    assert 0 < result.spiking_layers[0].firing_rate < 1
    per_step = [sum(_layer(result, n).synops_per_step[t] for n in ("conv1x1", "conv3x3s2", "fc"))
                for t in range(T)]
    assert result.synops_per_step == pytest.approx(np.cumsum(per_step).tolist(), rel=1e-12)


def test_energy_and_accuracy_per_step(chain):
    snn, _, x, y, _ = chain
    result = onnx_rmpe.report(snn, (x, y), energy_mac=5.0, energy_ac=1.0)
    first = _layer(result, "conv0").macs
    assert result.ann_energy_pj == pytest.approx(5.0 * result.ann_macs)
    for t in range(1, T + 1):
        want = 5.0 * first * t + 1.0 * result.synops_per_step[t - 1]
        assert result.snn_energy_pj_per_step[t - 1] == pytest.approx(want, rel=1e-12)
    once = onnx_rmpe.report(snn, (x, y), first_layer_every_step=False)
    assert once.snn_macs_per_step == [first] * T
    want = onnx_rmpe.evaluate(snn, (x, y))
    assert result.accuracy_per_step == pytest.approx(want.accuracy_per_step, abs=1e-12)
    assert result.synops_mac_ratio[-1] == pytest.approx(result.synops_per_step[-1]
                                                        / result.ann_macs)


def test_json_and_pngs(chain, tmp_path):
    pytest.importorskip("matplotlib")  # the [test] extra installs it; CI runs this test
    from matplotlib.image import imread

    snn, _, x, y, _ = chain
    result = onnx_rmpe.report(snn, (x, y), out_dir=tmp_path)
    assert result.note is None
    names = sorted(p.name for p in result.files)
    assert names == ["accuracy_vs_T.png", "energy_vs_accuracy.png", "firing_rates.png",
                     "report.json"]
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000
        image = imread(png)
        assert image.shape[0] >= 300 and image.shape[1] >= 500
        assert image[..., :3].std() > 0.05             # not a blank canvas
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["energy_constants"]["mac_pj"] == 4.6 and data["energy_constants"]["ac_pj"] == 0.9
    assert len(data["accuracy_per_step"]) == T and len(data["snn_energy_pj_per_step"]) == T
    assert data["linear_layers"][1]["synops"] == pytest.approx(result.linear_layers[1].synops)


def test_without_matplotlib_writes_json_and_a_note(chain, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    snn, _, x, y, _ = chain
    result = onnx_rmpe.report(snn, (x, y), out_dir=tmp_path)
    assert "matplotlib is not installed" in result.note and "[plot]" in result.note
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_memory_does_not_grow_with_samples(chain, monkeypatch):
    """The pass keeps running sums only: same state for 8 or 48 samples, batches bounded."""
    snn, _, x, _, _ = chain
    fed: list[int] = []
    real = activity.make_session

    def spy(*args, **kwargs):
        session = real(*args, **kwargs)
        run_real = session.run

        class Wrapped:
            def __getattr__(self, name):
                return getattr(session, name)

            def run(self, names, feeds):
                fed.append(len(next(iter(feeds.values()))))
                return run_real(names, feeds)
        return Wrapped()

    monkeypatch.setattr(activity, "make_session", spy)
    big = np.concatenate([x, x])
    sizes = {}
    for data in (x[:8], big):
        result = onnx_rmpe.report(snn, data, batch_size=8)
        shapes = tensor_shapes(snn, data)
        counter, _, _ = activity.record(
            snn, data, None, spikes=[n.output[0] for n in snn.graph.node
                                     if n.op_type == "IFNeuron"],
            shapes={k: v[1:] for k, v in shapes.items()}, T=T,
            per_step_output="y_per_step", batch_size=8)
        sizes[len(data)] = counter.state_nbytes()
        assert result.samples == len(data)
    assert sizes[8] == sizes[len(big)]
    assert max(fed) == 8 and sum(fed) == 2 * (8 + len(big))


def test_user_errors(chain):
    snn, _, x, _, _ = chain
    ann, _ = chain_model(np.random.default_rng(1))
    with pytest.raises(ConversionError, match="not an SNN"):
        onnx_rmpe.report(ann, x)
    with pytest.raises(ConversionError, match="energ"):
        onnx_rmpe.report(snn, x, energy_ac=0)


def test_cli_convert_evaluate_inspect_report(tmp_path):
    from click.testing import CliRunner

    from onnx_rmpe.cli.main import cli

    rng = np.random.default_rng(3)
    model, _ = chain_model(rng)
    onnx.save(model, str(tmp_path / "net.onnx"))
    x = rng.uniform(0, 1, (40, 2, 5, 5)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x, y=rng.integers(0, 10, 40))

    def invoke(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    r = invoke("convert", tmp_path / "net.onnx", "--T", T, "--calib", tmp_path / "calib.npz",
               "--save-qcfs", tmp_path / "net.qcfs.onnx", "--report", tmp_path / "conv",
               "--threads", 1)
    assert r.exit_code == 0, r.output
    assert "Linear layers" in r.output and "SNN/ANN energy" in r.output
    conv = json.loads((tmp_path / "conv" / "report.json").read_text())
    assert conv["samples"] == 40 and conv["ann_accuracy"] is not None
    assert conv["linear_layers"][0]["inputs"] == "static"

    snn = tmp_path / "net.snn.onnx"
    r = invoke("evaluate", snn, "--data", tmp_path / "calib.npz", "--report", tmp_path / "ev",
               "--qcfs", tmp_path / "net.qcfs.onnx", "--energy-ac", 0.5, "--threads", 1)
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert ev["energy_constants"]["ac_pj"] == 0.5 and ev["qcfs_accuracy"] is not None
    assert ev["synops_per_step"] == pytest.approx(conv["synops_per_step"], rel=1e-9)
    assert f"accuracy: {ev['accuracy_per_step'][-1]:.4f}" in r.output

    r = invoke("inspect", snn)
    assert r.exit_code == 0, r.output
    assert "MACs per sample (linear layers, dense): 3,765" in r.output
    assert "RMPE calibration (recorded" in r.output
    assert all(f"    {name} " in r.output for name in ("A", "B", "C"))
    r = invoke("inspect", tmp_path / "net.onnx")
    assert "MACs per sample (linear layers, dense): 3,765" in r.output

    r = invoke("evaluate", snn, "--data", tmp_path / "calib.npz", "--report", tmp_path / "e2",
               "--energy-mac", -1)
    assert r.exit_code == 1 and "error: option --energy-mac" in r.output
    assert not (tmp_path / "e2").exists()


def _op_model(rng, kind: str) -> onnx.ModelProto:
    """x[N,4,6,6] -> one op (or pool + op) with positive weights, some exactly zero."""
    w = np.abs(_w(rng, 6, 4, 3, 3)) + 0.1
    w[w < 0.3] = 0.0
    node = {
        "s2p1": helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1]),
        "dil_groups_asym": helper.make_node("Conv", ["x", "wg"], ["y"], dilations=[2, 1],
                                            pads=[0, 1, 2, 0], group=2),
        "same_upper": helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2],
                                       auto_pad="SAME_UPPER"),
        "transpose": helper.make_node("ConvTranspose", ["x", "wt"], ["y"], strides=[2, 2],
                                      pads=[1, 1, 1, 1]),
        "pool_conv": helper.make_node("Conv", ["p", "w"], ["y"], pads=[1, 1, 1, 1]),
        "matmul": helper.make_node("MatMul", ["x", "m"], ["y"]),
    }[kind]
    nodes = [node]
    if kind == "pool_conv":
        nodes.insert(0, helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2],
                                         strides=[2, 2]))
    m = np.abs(_w(rng, 6, 5))
    m[m < 0.4] = 0.0
    inits = [("w", w), ("wg", w[:, :2]), ("wt", w.transpose(1, 0, 2, 3)[:, :3]), ("m", m)]
    inits = [(k, v) for k, v in inits if k in node.input]
    model = make_model(nodes, [vi("x", ["N", 4, 6, 6])], [vi("y", ["N", "C", "H", "W"])], inits)
    return model


@pytest.mark.parametrize("kind", ["s2p1", "dil_groups_asym", "same_upper", "transpose",
                                  "pool_conv", "matmul"])
def test_fanout_equals_brute_force_count(kind):
    """Fan-out of every input element = outputs that change when only it is 1 (onnxruntime)."""
    import onnx_graphsurgeon as gs

    from onnx_rmpe.runtime.fanout import glue_fanout, layer_fanout

    model = _op_model(np.random.default_rng(5), kind)
    probes = np.eye(4 * 36, dtype=np.float32).reshape(-1, 4, 6, 6)
    reached = (run(model, probes)[0] != 0).reshape(len(probes), -1).sum(1)
    graph = gs.import_onnx(model)
    names = [t.name for n in graph.nodes for t in n.outputs]
    shapes = tensor_shapes(model, probes, names=names)
    *glue, layer = graph.nodes
    fan, _ = layer_fanout(layer, shapes)
    for node in reversed(glue):
        fan = glue_fanout(node, 0, fan, shapes)
    np.testing.assert_array_equal(np.asarray(fan).reshape(-1), reached)
    assert reached.min() < reached.max()             # borders and zeros make it vary


def test_streaming_model_is_stepped_with_the_same_figures(chain):
    from onnx_rmpe.forms import snn_to_streaming

    snn, _, x, y, _ = chain
    multi = onnx_rmpe.report(snn, (x, y), batch_size=10)
    stream = onnx_rmpe.report(snn_to_streaming(snn), (x, y), batch_size=10)
    assert stream.T == T and len(stream.linear_layers) == len(multi.linear_layers)
    assert stream.accuracy_per_step == multi.accuracy_per_step
    assert stream.synops_per_step == pytest.approx(multi.synops_per_step, rel=1e-12)
    for a, b in zip(stream.spiking_layers, multi.spiking_layers):
        assert (a.name, a.neurons) == (b.name, b.neurons)
        assert a.firing_rate == pytest.approx(b.firing_rate, rel=1e-12)
        assert a.saturated_fraction == pytest.approx(b.saturated_fraction, rel=1e-12)
    for a, b in zip(stream.linear_layers, multi.linear_layers):
        assert (a.name, a.inputs, a.macs) == (b.name, b.inputs, b.macs)
    assert multi.synops_per_step[-1] > 0
