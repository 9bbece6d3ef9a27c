"""RMPE calibration: rates meet the ANN means, v_init is wired, accuracy at T = 2 rises."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_rmpe.calibration import calibrate
from onnx_rmpe.conversion import convert
from onnx_rmpe.errors import OptionError
from onnx_rmpe.modelio import get_metadata, to_graph, to_model
from onnx_rmpe.passes.rmpe import if_nodes, set_initial_potentials
from onnx_rmpe.runtime.neurons import if_reference
from onnx_rmpe.runtime.segments import segments
from onnx_rmpe.runtime.statistics import expose_outputs
from tests.helpers import accuracy, run


@pytest.fixture(scope="module")
def plain_and_calibrated(resnet, digits_data):
    (x, _), _ = digits_data
    plain = convert(resnet, T=2, calib=x[:512], levels=4, rmpe=False, thresholds="percentile")
    calibrated = calibrate(plain.snn, plain.qcfs, x[:512], batch_size=100)
    return plain, calibrated


def _layer_rates(snn, qcfs, x, T):
    """Per-layer mean SNN rate and mean ANN activation, measured directly on the full SNN."""
    layers = [(n.name, n.outputs[0].name, float(n.inputs[1].values))
              for n in if_nodes(to_graph(snn))]
    snn_out = run(expose_outputs(snn, [s for _, s, _ in layers]), x)
    ann_names = {n.name: n.output[0] for n in qcfs.graph.node}
    ann_out = run(expose_outputs(qcfs, [ann_names[n] for n, _, _ in layers]), x)
    k = len(snn.graph.output)
    rates = [o.reshape((T, -1) + o.shape[1:]).mean(0).mean(0) for o in snn_out[k:]]
    means = [a.mean(0) for a in ann_out[len(qcfs.graph.output):]]
    return rates, means


def test_calibration_meets_ann_means_layer_by_layer(plain_and_calibrated, digits_data):
    (x, _), _ = digits_data
    plain, calibrated = plain_and_calibrated
    T = 2
    before, target = _layer_rates(plain.snn, plain.qcfs, x[:512], T)
    after, _ = _layer_rates(calibrated.snn, plain.qcfs, x[:512], T)
    for b, a, t in zip(before, after, target):
        err_before, err_after = np.abs(b - t).mean(), np.abs(a - t).mean()
        assert err_after <= err_before, (err_before, err_after)
    # the report agrees: every layer improves
    assert len(calibrated.layers) == len(before) == 5
    for layer in calibrated.layers:
        assert layer.error_after < layer.error_before, layer
        assert 0 < layer.firing_rate < 1


def test_zero_v_init_gives_the_uncalibrated_model(plain_and_calibrated, digits_data):
    _, (xt, _) = digits_data
    plain, calibrated = plain_and_calibrated
    graph = to_graph(calibrated.snn)
    names = [n.name for n in if_nodes(graph)]
    assert all(np.abs(n.inputs[2].values).max() > 0 for n in if_nodes(graph))
    set_initial_potentials(graph, v_inits={n: np.zeros((), np.float32) for n in names})
    reset = to_model(graph)
    for got, want in zip(run(reset, xt), run(plain.snn, xt)):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(run(calibrated.snn, xt)[0], run(plain.snn, xt)[0])


def test_rmpe_raises_accuracy_at_T2(plain_and_calibrated, digits_data):
    _, (xt, yt) = digits_data
    plain, calibrated = plain_and_calibrated
    acc_plain = accuracy(run(plain.snn, xt)[0], yt)
    acc_rmpe = accuracy(run(calibrated.snn, xt)[0], yt)
    assert acc_rmpe > acc_plain + 0.01, (acc_plain, acc_rmpe)
    meta = get_metadata(calibrated.snn)
    assert meta["onnx_rmpe.rmpe"] == "layerwise" and meta["onnx_rmpe.rmpe_T"] == "2"
    assert meta["onnx_rmpe.rmpe_samples"] == "512"
    onnx.checker.check_model(calibrated.snn, full_check=True)


def test_segments_reproduce_the_full_network(plain_and_calibrated, digits_data):
    """Each segment fed the cached spikes gives exactly the full SNN's layer input."""
    (x, _), _ = digits_data
    _, calibrated = plain_and_calibrated
    snn, T, xb = calibrated.snn, 2, x[:32]
    segs = segments(snn)
    names = [s.layer.current for s in segs] + [s.layer.spikes for s in segs]
    full = dict(zip(names, run(expose_outputs(snn, names), xb)[len(snn.graph.output):]))
    for seg in segs:
        feed = {n: full[n] for n in seg.spike_inputs}
        if seg.needs_input:
            feed[seg.model.graph.input[0].name] = xb
        from tests.helpers import session
        got = session(seg.model).run(None, feed)[0]
        np.testing.assert_array_equal(got, full[seg.layer.current])
        v = next(n for n in if_nodes(to_graph(snn)) if n.name == seg.layer.name).inputs[2].values
        spikes, _ = if_reference(got.reshape((T, -1) + got.shape[1:]), seg.layer.theta, v)
        np.testing.assert_array_equal(spikes.reshape(got.shape) * seg.layer.theta,
                                      full[seg.layer.spikes])


def test_channel_granularity_and_options(resnet, digits_data):
    (x, _), (xt, yt) = digits_data
    # the shapes of the channel potentials are the subject: no weight reconstruction, whose
    # refitted layers make the check reject channel potentials on this net at T=2 (z 5.7)
    result = convert(resnet, T=2, calib=x[:256], levels=4, rmpe_granularity="channel",
                     reconstruct="none")
    assert result.calibration.accepted, result.calibration.check  # z about -2.7 here
    for node in if_nodes(to_graph(result.snn)):
        v = np.asarray(node.inputs[2].values)
        assert v.ndim == 1 or v.shape[1:] == (1, 1)
    with pytest.raises(OptionError, match="granularity"):
        convert(resnet, T=2, calib=x[:64], rmpe_granularity="layer")
    with pytest.raises(OptionError, match="--calib"):
        convert(resnet, T=2)


def test_long_T_targets_finer_levels_and_is_not_worse(resnet, digits_data):
    """At T > L the target is the ANN with T levels, so RMPE does not pull a long SNN back
    to the coarser QCFS ANN."""
    (x, _), (xt, yt) = digits_data
    plain = convert(resnet, T=16, calib=x[:256], levels=4, rmpe=False)
    fine = calibrate(plain.snn, plain.qcfs, x[:256])
    coarse = calibrate(plain.snn, plain.qcfs, x[:256], target_levels=4)
    assert get_metadata(fine.snn)["onnx_rmpe.rmpe_target_levels"] == "16"
    acc = {name: accuracy(run(m, xt)[0], yt)
           for name, m in (("plain", plain.snn), ("fine", fine.snn), ("coarse", coarse.snn))}
    assert acc["fine"] >= acc["plain"] - 0.005, acc
    assert acc["fine"] >= acc["coarse"] - 0.005, acc


def test_check_rejects_a_calibration_that_lowers_agreement(plain_and_calibrated, digits_data):
    """With the uncalibrated SNN as reference, 'before' agrees perfectly, so any change is
    rejected and the model comes back with its uncalibrated potentials."""
    (x, _), (xt, _) = digits_data
    plain, _ = plain_and_calibrated
    result = calibrate(plain.snn, plain.qcfs, x[:256], reference=plain.snn)
    assert result.check["before"] == 0.0 and result.check["after"] > 0.0
    assert not result.accepted
    assert get_metadata(result.snn)["onnx_rmpe.rmpe"] == "rejected"
    np.testing.assert_array_equal(run(result.snn, xt)[0], run(plain.snn, xt)[0])


def test_rejected_recalibration_keeps_the_earlier_calibration(plain_and_calibrated,
                                                              digits_data, caplog):
    """Recalibrating an already calibrated SNN (issue 15.2): when the check rejects it, the
    earlier calibration stays, and the metadata and the warning say exactly that."""
    (x, _), (xt, _) = digits_data
    plain, calibrated = plain_and_calibrated
    # the calibrated SNN as its own reference: any change of its potentials is worse
    again = calibrate(calibrated.snn, plain.qcfs, x[512:640], reference=calibrated.snn)
    assert again.check["before"] == 0.0 and again.check["after"] > 0.0
    assert not again.accepted
    meta, earlier = get_metadata(again.snn), get_metadata(calibrated.snn)
    assert meta["onnx_rmpe.rmpe"] == "layerwise"
    assert meta["onnx_rmpe.rmpe_samples"] == earlier["onnx_rmpe.rmpe_samples"] == "512"
    assert "kept the earlier calibration" in meta["onnx_rmpe.rmpe_recalibration"]
    assert "potentials the SNN had before" in caplog.text
    assert "T <= L" not in caplog.text and "uncalibrated" not in caplog.text
    np.testing.assert_array_equal(run(again.snn, xt)[0], run(calibrated.snn, xt)[0])


def test_check_accepts_a_calibration_that_brings_the_ann_closer(plain_and_calibrated,
                                                                  digits_data):
    (x, y), _ = digits_data
    plain, _ = plain_and_calibrated
    result = calibrate(plain.snn, plain.qcfs, (x[:256], y[:256]))
    assert result.accepted and result.check["after"] < result.check["before"]
    assert result.check["agreement_with"] == "labels" and result.check["z"] < 0


def test_current_cache_and_rerun_give_the_same_calibration(plain_and_calibrated, digits_data,
                                                           monkeypatch):
    """Input currents kept in memory, in a file, or the segment run again: bit-identical
    potentials."""
    from onnx_rmpe.calibration import job as cal  # the module that reads the limit
    from onnx_rmpe.calibration import sweep
    (x, _), _ = digits_data
    plain, _ = plain_and_calibrated
    cached = calibrate(plain.snn, plain.qcfs, x[:200], check=False)
    monkeypatch.setattr(cal, "CURRENT_CACHE_BYTES", 0)
    on_disk = calibrate(plain.snn, plain.qcfs, x[:200], check=False)
    monkeypatch.setattr(sweep, "DISK_CURRENT_BYTES", 0)
    rerun = calibrate(plain.snn, plain.qcfs, x[:200], check=False)
    layers = if_nodes(to_graph(cached.snn))
    assert max(float(np.abs(n.inputs[2].values).max()) for n in layers) > 0.01
    for other in (on_disk, rerun):
        for a, b in zip(layers, if_nodes(to_graph(other.snn))):
            np.testing.assert_array_equal(a.inputs[2].values, b.inputs[2].values)


def test_check_takes_the_uncalibrated_outputs_from_the_caller(plain_and_calibrated,
                                                              digits_data):
    """Given the uncalibrated SNN's outputs (as convert gives them from the threshold
    search), the check decides on the same errors and the potentials are the same."""
    from onnx_rmpe.errors import ConversionError
    (x, _), _ = digits_data
    plain, calibrated = plain_and_calibrated
    given = calibrate(plain.snn, plain.qcfs, x[:512], batch_size=100,
                      uncalibrated_outputs=run(plain.snn, x[:512])[0])
    assert given.check["before"] == pytest.approx(calibrated.check["before"], rel=1e-5)
    assert given.check["after"] == calibrated.check["after"] and given.accepted
    for a, b in zip(if_nodes(to_graph(calibrated.snn)), if_nodes(to_graph(given.snn))):
        np.testing.assert_array_equal(a.inputs[2].values, b.inputs[2].values)
    with pytest.raises(ConversionError, match="uncalibrated_outputs has 10 rows"):
        calibrate(plain.snn, plain.qcfs, x[:20], uncalibrated_outputs=np.zeros((10, 10)))


def test_check_reads_the_calibrated_outputs_from_the_spike_caches(plain_and_calibrated,
                                                                  digits_data):
    """The check's errors, whose 'after' side comes from the readout segment run on the
    sweep's spike caches (no second pass of the SNN), match the errors of the full models
    run end to end (relative tolerance 1e-5: the readout segment may pick other kernels)."""
    (x, _), _ = digits_data
    plain, calibrated = plain_and_calibrated
    assert calibrated.accepted
    target = run(plain.qcfs, x[:512])[0].astype(np.float64)
    for key, model in (("before", plain.snn), ("after", calibrated.snn)):
        out = run(model, x[:512])[0]
        mse = float(((out - target) ** 2).sum(1).mean() / target[0].size)
        assert calibrated.check[key] == pytest.approx(mse, rel=1e-5, abs=1e-9), key
    assert calibrated.check["before"] != pytest.approx(calibrated.check["after"], rel=1e-2)


def test_keeping_the_readout_caches_leaves_the_potentials_unchanged(plain_and_calibrated,
                                                                    digits_data):
    """With the check (the sweep also keeps the spikes the output reads) or without it:
    bit-identical initial potentials."""
    (x, _), _ = digits_data
    plain, calibrated = plain_and_calibrated
    unchecked = calibrate(plain.snn, plain.qcfs, x[:512], batch_size=100, check=False)
    for a, b in zip(if_nodes(to_graph(calibrated.snn)), if_nodes(to_graph(unchecked.snn))):
        np.testing.assert_array_equal(a.inputs[2].values, b.inputs[2].values)
