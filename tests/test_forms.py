"""Every SNN form against the multi-step Scan model: same spikes, same outputs.

Forms: the IF body (``unrolled``: Split / elementwise / Concat; ``scan``), the chunked
model (k steps per call, state carried; both bodies), the network-unrolled model and the
streaming model, for a CNN with max pools (cumulative form, one pool in the static part)
and a residual net with a LogSoftmax head, with random per-neuron v_init.

* The two IF bodies sit in otherwise identical graphs and run the same float32 operations
  in the same order: tolerance zero (``assert_array_equal``).
* The chunked, unrolled and streaming forms also keep the operations and their order, but
  run each linear op on ``[k*N, ...]`` or ``[N, ...]`` instead of ``[T*N, ...]``, and
  onnxruntime may pick another kernel (another summation order) for another size. So
  :func:`assert_same_run` accepts either bit-identical results (what these small nets give
  on the development machine) or, stated tolerance, outputs within 1e-5 (relative to their
  scale) with at most 0.5 % of the spikes moved by a rounding at the threshold.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_rmpe.conversion import convert, qcfs_to_snn
from onnx_rmpe.errors import OptionError
from onnx_rmpe.forms import (
    chunk_for_budget,
    snn_to_chunked,
    snn_to_streaming,
    snn_to_unrolled,
    step_bytes_per_sample,
)
from onnx_rmpe.modelio import ensure_functions
from onnx_rmpe.runtime.neurons import IF_CHUNK_OP, IF_OP
from onnx_rmpe.runtime.streaming import StreamingRunner, initial_states
from tests.helpers import export_torch, run, train
from tests.kit import neurons, random_v_init, with_outputs
from tests.test_streaming import _cnn, _resnet

T_MAX = 6


@pytest.fixture(scope="module", params=["cnn", "resnet"])
def nets(request, digits_data):
    """``(qcfs, {T: calibrated-like Scan SNN})`` with random per-neuron v_init."""
    (x, y), _ = digits_data
    net = train({"cnn": _cnn, "resnet": _resnet}[request.param](), x[:600], y[:600], epochs=2)
    qcfs = convert(export_torch(net, x), T=4, calib=x[:200], rmpe=False).qcfs
    rng = np.random.default_rng(3)
    snns = {T: random_v_init(qcfs_to_snn(qcfs, T=T, form="scan"), x[:1], rng)
            for T in (1, 2, 5, T_MAX)}
    return qcfs, snns








def assert_same_run(got: np.ndarray, want: np.ndarray, *, spikes: bool = False,
                    name: str = "") -> None:
    """Bit-identical, or within the tolerance stated in the module doc."""
    assert got.shape == want.shape, name
    if np.array_equal(got, want):
        return
    if spikes:
        moved = float(((got > 0) != (want > 0)).mean())
        assert moved <= 5e-3, f"{name}: {moved:.2%} of the spikes differ"
    else:
        scale = float(np.abs(want).max()) or 1.0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=name)


def _multi(snn: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs and per-layer spikes ``[T*N, ...]`` of a multi-step model, by name."""
    spikes = [n.output[0] for n in neurons(snn)]
    names = [o.name for o in snn.graph.output] + spikes
    return dict(zip(names, run(with_outputs(snn, spikes), x)))


@pytest.mark.parametrize("T", [1, 2, 5, T_MAX])
def test_unrolled_equals_scan(nets, digits_data, T):
    qcfs, snns = nets
    _, (x_test, _) = digits_data
    x = x_test[:16]
    scan = snns[T]
    unrolled = onnx.ModelProto.FromString(scan.SerializeToString())
    for node in neurons(unrolled):
        (form,) = [a for a in node.attribute if a.name == "form"]
        assert form.s == b"scan"
        form.s = b"unrolled"
    unrolled = ensure_functions(unrolled)
    onnx.checker.check_model(unrolled, full_check=True)
    body = {f.name: {n.op_type for n in f.node} for f in unrolled.functions}[IF_OP]
    assert "Scan" not in body and ("Split" in body or T == 1)
    want, got = _multi(scan, x), _multi(unrolled, x)
    assert want.keys() == got.keys()
    fired = 0
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        fired += int((want[name] > 0).sum()) if name not in [o.name for o in scan.graph.output] \
            else 0
    assert fired > 0
    assert qcfs_to_snn(qcfs, T=T).graph.node  # default form builds too


@pytest.mark.parametrize("T,chunk,form", [(1, 1, "unrolled"), (5, 1, "unrolled"),
                                          (T_MAX, 2, "unrolled"), (T_MAX, 3, "unrolled"),
                                          (5, 5, "scan"), (T_MAX, 3, "scan")])
def test_chunked_equals_multi_step(nets, digits_data, T, chunk, form):
    qcfs, snns = nets
    _, (x_test, _) = digits_data
    x = x_test[:16]
    snn = snns[T]
    chunked = snn_to_chunked(qcfs, snn, chunk=chunk, form=form)
    onnx.checker.check_model(chunked, full_check=True)
    assert chunked.ir_version == 10
    assert not neurons(chunked) and len(neurons(chunked, IF_CHUNK_OP)) == len(neurons(snn))
    want = _multi(snn, x)
    out = snn.graph.output[0].name
    spikes = [n.output[0] for n in neurons(chunked, IF_CHUNK_OP)]
    runner = StreamingRunner(with_outputs(chunked, spikes), threads=1)
    got = runner.run(x, T)
    assert got.shape == want[f"{out}_per_step"].shape == (T, len(x), 10)
    assert_same_run(got, want[f"{out}_per_step"])
    assert_same_run(runner.outputs[out], want[out])
    runner.reset(len(x))
    per_layer = {n: [] for n in spikes}
    for _ in range(T // chunk):
        runner.step(x)
        for n in spikes:
            per_layer[n].append(runner.outputs[n])
    for n in spikes:
        assert_same_run(np.concatenate(per_layer[n]), want[n], spikes=True, name=n)


@pytest.mark.parametrize("T", [1, 5, T_MAX])
def test_network_unrolled_equals_multi_step(nets, digits_data, T):
    _, snns = nets
    _, (x_test, _) = digits_data
    x = x_test[:16]
    snn = snns[T]
    unrolled = snn_to_unrolled(snn)
    onnx.checker.check_model(unrolled, full_check=True)
    ops = {n.op_type for n in unrolled.graph.node}
    assert not ops & {"Scan", "Split", IF_OP} and not unrolled.functions
    assert [i.name for i in unrolled.graph.input] == [i.name for i in snn.graph.input]
    assert [o.name for o in unrolled.graph.output] == [o.name for o in snn.graph.output]
    want = _multi(snn, x)
    layers = [n.output[0] for n in neurons(snn)]
    steps = [f"{n}@{t}" for n in layers for t in range(1, T + 1)]
    got = dict(zip([o.name for o in unrolled.graph.output] + steps,
                   run(with_outputs(unrolled, steps), x)))
    for o in snn.graph.output:
        assert_same_run(got[o.name], want[o.name], name=o.name)
    for n in layers:
        per_step = np.concatenate([got[f"{n}@{t}"] for t in range(1, T + 1)])
        assert_same_run(per_step, want[n], spikes=True, name=n)


def test_chunked_state_defaults_are_calibrated_start(nets):
    qcfs, snns = nets
    snn = snns[T_MAX]
    chunked = snn_to_chunked(qcfs, snn, chunk=2)
    inits = {i.name: numpy_helper.to_array(i) for i in snn.graph.initializer}
    start = initial_states(chunked, 3)
    for node in neurons(snn):
        v0 = inits[node.input[1]] * np.float32(0.5) + inits[node.input[2]]
        np.testing.assert_array_equal(start[f"{node.name}.v"], np.broadcast_to(v0, (3, *v0.shape)))
    assert float(start["step"]) == 0.0


def test_streaming_equals_scan(nets, digits_data):
    _, snns = nets
    _, (x_test, _) = digits_data
    snn = snns[5]
    got = StreamingRunner(snn_to_streaming(snn), threads=1).run(x_test[:8], 5)
    out = snn.graph.output[0].name
    assert_same_run(got, _multi(snn, x_test[:8])[f"{out}_per_step"])


def test_chunk_must_divide_T(nets):
    qcfs, snns = nets
    with pytest.raises(OptionError, match="option chunk"):
        snn_to_chunked(qcfs, snns[5], chunk=2)


def test_chunk_for_budget_picks_largest_fitting_divisor(nets):
    qcfs, _ = nets
    per_step = step_bytes_per_sample(qcfs)
    assert per_step > 0
    mb = per_step * 64 / 2**20  # one step at batch 64
    assert chunk_for_budget(qcfs, T=8, batch=64, budget_mb=mb * 4.5) == 4
    assert chunk_for_budget(qcfs, T=8, batch=64, budget_mb=mb * 1.01) == 1
    assert chunk_for_budget(qcfs, T=8, batch=64, budget_mb=mb * 100) == 8
    with pytest.raises(OptionError, match="max_memory"):
        chunk_for_budget(qcfs, T=8, batch=64, budget_mb=mb * 0.5)


@pytest.mark.parametrize("form", ["stream", "chunk"])
def test_io_binding_runner_equals_plain_runner(nets, digits_data, form):
    qcfs, snns = nets
    _, (x_test, _) = digits_data
    snn = snns[T_MAX]
    model = snn_to_streaming(snn) if form == "stream" else snn_to_chunked(qcfs, snn, chunk=2)
    plain = StreamingRunner(model, threads=1)
    bound = StreamingRunner(model, threads=1, io_binding=True)
    for x in (x_test[:5], x_test[5:6], x_test[:5]):  # batch changes reset the buffers
        want = plain.run(x, T_MAX)
        np.testing.assert_array_equal(bound.run(x, T_MAX), want)
        assert_same_run(want, _multi(snn, x)[f"{snn.graph.output[0].name}_per_step"])
        assert bound.outputs.keys() == plain.outputs.keys()
        for name, value in plain.outputs.items():
            np.testing.assert_array_equal(bound.outputs[name], value, err_msg=name)


def test_evaluate_unrolled_equals_as_is(nets, digits_data):
    from onnx_rmpe.evaluation import evaluate
    _, snns = nets
    _, (x_test, y_test) = digits_data
    snn = snns[5]
    snn.metadata_props.add(key="onnx_rmpe.T", value="5")
    data = (x_test[:64], y_test[:64])
    as_is = evaluate(snn, data, unroll=False, threads=1)
    unrolled = evaluate(snn, data, threads=1)  # default: unrolled at T <= 64
    assert as_is.kind == unrolled.kind == "snn" and unrolled.T == 5
    per_step = _multi(snn, data[0])[f"{snn.graph.output[0].name}_per_step"]
    want = [float((p.argmax(-1) == data[1]).mean()) for p in per_step]
    np.testing.assert_allclose(as_is.accuracy_per_step, want, atol=1e-12)
    # the unrolled form's outputs are equal up to the rounding stated above: at most one
    # of the 64 samples may change class at a step
    np.testing.assert_allclose(unrolled.accuracy_per_step, want, atol=1.5 / 64)
