"""Property tests (hypothesis) over random small networks built in the test.

Each example is a random ReLU network, 1 to 3 hidden layers, built with ``onnx.helper``:
a CNN (Conv with or without bias, groups, stride, padding; residual ``relu(conv(a) + a)``;
AveragePool or MaxPool) or an MLP (Gemm with or without bias and ``transB``, MatMul with
or without a bias Add; residual ``relu(W a + a)``), then a Gemm or MatMul head. Weights
(He scale) and calibration inputs are random, seeded by the example. The properties:

1. every such network converts (with and without RMPE) to an SNN that passes the full
   onnx checker, has one IF neuron per ReLU and runs;
2. at ``T = L`` the first spiking layer reproduces the QCFS layer exactly: per neuron the
   spike count ``N(T)`` equals the QCFS level ``clip(floor(z L / lam + phi), 0, L)``,
   allowing one level only where ``z L / lam + phi`` lies within float rounding of an
   integer;
3. the SNN approaches the clip ANN as T grows: its output error at T = 64 and T = 256 is
   a fraction of the error at T = 4 (up to float rounding where that one is ~0);
4. the streaming form (one step per call) gives the multi-step form's per-step outputs.

Examples are derandomized (the same on every run and machine) and few, so the file runs
in well under a minute on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnx_rmpe.calibration import CLIP_LEVELS, qcfs_with_levels
from onnx_rmpe.conversion import convert
from onnx_rmpe.runtime.neurons import DEFAULT_PHI, DOMAIN, IF_OP, QCFS_OP
from onnx_rmpe.runtime.statistics import expose_outputs
from onnx_rmpe.runtime.streaming import StreamingRunner
from tests.graphs import make_model, vi
from tests.helpers import run

K = 3  # classes of the head
SAMPLES = 24  # calibration (and test) inputs per example
PROPS = settings(max_examples=12, deadline=None, derandomize=True, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Layer:
    """One hidden layer: ``kind`` is conv, res (residual conv), dense or dense_res."""

    kind: str
    out: int
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    groups: int = 1
    bias: bool = True
    matmul: bool = False  # dense: MatMul (+ Add if bias) instead of Gemm
    trans_b: bool = True  # dense Gemm: weight stored [out, in]
    pool: str = ""  # conv: "", "avg" or "max", 2x2 after the activation
    pool_stride: int = 2


@dataclass(frozen=True)
class NetSpec:
    """A random network: input shape (without batch), hidden layers, head, weight seed."""

    shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    head_matmul: bool
    seed: int

    @property
    def relus(self) -> int:
        return len(self.layers)

    def features(self) -> set[str]:
        """What the network contains (reported by ``pytest --hypothesis-show-statistics``)."""
        found = {"cnn" if len(self.shape) > 1 else "mlp", f"{len(self.layers)} layer(s)"}
        for layer in self.layers:
            found |= {layer.kind, f"pool {layer.pool}" if layer.pool else "",
                      "groups" if layer.groups > 1 else "", "no bias" if not layer.bias else "",
                      f"stride {layer.stride}" if layer.kind == "conv" else "",
                      "MatMul" if layer.matmul and "dense" in layer.kind else ""}
        return found - {""}


def _divisors(*values: int) -> list[int]:
    return [g for g in (1, 2, 3) if all(v % g == 0 for v in values)]


@st.composite
def conv_nets(draw) -> NetSpec:
    channels, size = draw(st.integers(1, 3)), draw(st.integers(5, 8))
    shape = (channels, size, size)
    layers = []
    for i in range(draw(st.integers(1, 3))):
        if i > 0 and draw(st.booleans()):
            groups = draw(st.sampled_from(_divisors(channels)))
            layer = Layer("res", channels, 3, 1, 1, groups, draw(st.booleans()))
        else:
            out = draw(st.sampled_from([2, 3, 4, 6]))
            kernel, stride, pad = (draw(st.sampled_from(v)) for v in ([1, 3], [1, 2], [0, 1]))
            kernel = kernel if size + 2 * pad >= kernel else 1
            layer = Layer("conv", out, kernel, stride, pad,
                          draw(st.sampled_from(_divisors(channels, out))), draw(st.booleans()))
            channels, size = out, (size + 2 * pad - kernel) // stride + 1
        if size >= 2:
            pool, pool_stride = draw(st.sampled_from(["", "", "avg", "max"])), draw(
                st.sampled_from([1, 2]))
            if pool:
                layer = replace(layer, pool=pool, pool_stride=pool_stride)
                size = (size - 2) // pool_stride + 1
        layers.append(layer)
    return NetSpec(shape, tuple(layers), draw(st.booleans()), draw(st.integers(0, 2**16)))


@st.composite
def mlps(draw) -> NetSpec:
    width = draw(st.integers(3, 10))
    shape = (width,)
    layers = []
    for i in range(draw(st.integers(1, 3))):
        residual = i > 0 and draw(st.booleans())
        out = width if residual else draw(st.integers(3, 8))
        layers.append(Layer("dense_res" if residual else "dense", out, bias=draw(st.booleans()),
                            matmul=draw(st.booleans()), trans_b=draw(st.booleans())))
        width = out
    return NetSpec(shape, tuple(layers), draw(st.booleans()), draw(st.integers(0, 2**16)))


networks = st.one_of(conv_nets(), mlps())


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[tuple[str, np.ndarray]] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        name = self.name("w")
        self.inits.append((name, self.rng.normal(0, np.sqrt(2 / fan_in), shape)
                           .astype(np.float32)))
        return name

    def bias(self, n: int) -> str:
        name = self.name("b")
        self.inits.append((name, self.rng.normal(0, 0.3, n).astype(np.float32)))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def conv(self, x: str, cin: int, layer: Layer, *, bias: bool | None = None) -> str:
        k, g = layer.kernel, layer.groups
        inputs = [x, self.weight((layer.out, cin // g, k, k), cin // g * k * k)]
        if layer.bias if bias is None else bias:
            inputs.append(self.bias(layer.out))
        return self.node("Conv", inputs, kernel_shape=[k, k], strides=[layer.stride] * 2,
                         pads=[layer.pad] * 4, group=g)

    def dense(self, x: str, cin: int, out: int, *, bias: bool, matmul: bool,
              trans_b: bool) -> str:
        if matmul:
            y = self.node("MatMul", [x, self.weight((cin, out), cin)])
            return self.node("Add", [y, self.bias(out)]) if bias else y
        shape = (out, cin) if trans_b else (cin, out)
        inputs = [x, self.weight(shape, cin)] + ([self.bias(out)] if bias else [])
        return self.node("Gemm", inputs, transB=int(trans_b))


def build(spec: NetSpec) -> onnx.ModelProto:
    """The ONNX model of ``spec``: input ``x`` ``[N, *shape]``, output ``y`` ``[N, K]``."""
    b = _Builder(spec.seed)
    h, width = "x", spec.shape[0]
    for layer in spec.layers:
        if layer.kind in ("conv", "res"):
            z = b.conv(h, width, layer)
            h = b.node("Relu", [b.node("Add", [z, h])] if layer.kind == "res" else [z])
            if layer.pool:
                op = "AveragePool" if layer.pool == "avg" else "MaxPool"
                h = b.node(op, [h], kernel_shape=[2, 2], strides=[layer.pool_stride] * 2)
        else:
            z = b.dense(h, width, layer.out, bias=layer.bias, matmul=layer.matmul,
                        trans_b=layer.trans_b)
            h = b.node("Relu", [b.node("Add", [z, h])] if layer.kind == "dense_res" else [z])
        width = layer.out
    if len(spec.shape) > 1:
        h = b.node("Flatten", [h])
        width = int(np.prod(_hidden_shape(spec)))
    b.dense(h, width, K, bias=True, matmul=spec.head_matmul, trans_b=True)
    b.nodes[-1].output[0] = "y"  # the head's last node (Gemm, MatMul or its bias Add)
    return make_model(b.nodes, [vi("x", ["N", *spec.shape])], [vi("y", ["N", K])], b.inits)


def _hidden_shape(spec: NetSpec) -> tuple[int, ...]:
    channels, size = spec.shape[0], spec.shape[1]
    for layer in spec.layers:
        size = (size + 2 * layer.pad - layer.kernel) // layer.stride + 1
        if layer.pool:
            size = (size - 2) // layer.pool_stride + 1
        channels = layer.out
    return channels, size, size


def inputs(spec: NetSpec, n: int = SAMPLES) -> np.ndarray:
    for feature in sorted(spec.features()):
        event(feature)
    rng = np.random.default_rng(spec.seed + 1)
    return rng.normal(0, 1, (n, *spec.shape)).astype(np.float32)


def _nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == op]


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


# 1. every network converts, with and without RMPE, to a valid SNN that runs

@PROPS
@given(spec=networks, T=st.sampled_from([1, 2, 4, 8]))
def test_every_network_converts(spec: NetSpec, T: int) -> None:
    model, x = build(spec), inputs(spec)
    ann = run(model, x)[0]
    for rmpe in (False, True):
        result = convert(model, T=T, calib=x, levels=4, rmpe=rmpe)
        snn = result.snn
        onnx.checker.check_model(snn, full_check=True)
        assert len(_nodes(snn, IF_OP)) == spec.relus
        assert not _nodes(snn, QCFS_OP)
        assert not any(n.op_type == "Relu" for n in snn.graph.node)
        assert [o.name for o in snn.graph.output] == ["y", "y_per_step"]
        y, per_step = run(snn, x)
        assert y.shape == ann.shape == (SAMPLES, K)
        assert per_step.shape == (T, SAMPLES, K)
        assert np.isfinite(per_step).all()
        np.testing.assert_allclose(per_step[-1], y, rtol=0, atol=1e-5)
        assert (result.calibration is not None) == rmpe


# 2. golden property: the first spiking layer at T = L is the QCFS layer

@PROPS
@given(spec=networks, L=st.sampled_from([1, 2, 3, 4, 8]))
def test_first_layer_at_T_equals_L_is_exact(spec: NetSpec, L: int) -> None:
    x = inputs(spec)
    result = convert(build(spec), T=L, calib=x, levels=L, rmpe=False)
    qcfs_node = _nodes(result.qcfs, QCFS_OP)[0]  # nodes are stored in topological order
    if_node = next(n for n in _nodes(result.snn, IF_OP) if n.name == qcfs_node.name)
    lam = float(_init(result.qcfs, qcfs_node.input[1]))
    z, h = run(expose_outputs(result.qcfs, [qcfs_node.input[0], qcfs_node.output[0]]), x,
               outputs=[qcfs_node.input[0], qcfs_node.output[0]])
    spikes = run(expose_outputs(result.snn, [if_node.output[0]]), x,
                 outputs=[if_node.output[0]])[0]
    spikes = spikes.reshape(L, len(x), *spikes.shape[1:])
    assert set(np.unique(spikes)) <= {0.0, np.float32(lam)}  # out(t) = theta * s(t)
    count = (spikes > 0).sum(0)
    level = np.rint(h.astype(np.float64) * L / lam).astype(int)
    np.testing.assert_allclose(h, level * np.float32(lam) / L, rtol=1e-6, atol=1e-6 * lam)
    u = z.astype(np.float64) * L / lam + DEFAULT_PHI
    tie = np.abs(u - np.rint(u)) < 1e-4  # float32 rounding of u is ~1e-6 for u in [0, L + 1]
    assert tie.mean() < 0.05, tie.mean()
    assert 0 < level.mean() < L  # neither all silent nor all saturated: the test has teeth
    assert np.array_equal(count[~tie], level[~tie]), np.abs(count - level)[~tie].max()
    assert np.abs(count[tie] - level[tie]).max(initial=0) <= 1


# 3. the SNN error to the clip ANN falls as T grows

@PROPS
@given(spec=networks)
def test_error_to_clip_ann_falls_with_T(spec: NetSpec) -> None:
    x = inputs(spec)
    result = convert(build(spec), T=256, calib=x, levels=4, rmpe=False)
    want = run(qcfs_with_levels(result.qcfs, CLIP_LEVELS), x)[0].astype(np.float64)
    per_step = run(result.snn, x)[1]  # per_step[t - 1]: the output of the SNN with T = t
    error = {T: float(np.abs(per_step[T - 1] - want).mean()) for T in (4, 64, 256)}
    # measured over 200 random networks: error(64) / error(4) <= 0.15 and error(256) /
    # error(4) <= 0.04 (about 1/T); 1e-5 is float rounding, where error(4) is ~0 already
    assert error[64] <= 0.5 * error[4] + 1e-5, error
    assert error[256] <= 0.25 * error[4] + 1e-5, error


# 4. the streaming form equals the multi-step form

@PROPS
@given(spec=networks, T=st.sampled_from([1, 2, 3, 5, 8]))
def test_streaming_equals_multi_step(spec: NetSpec, T: int) -> None:
    x = inputs(spec)
    model = build(spec)
    multi = convert(model, T=T, calib=x, levels=4, rmpe=True).snn
    stream = convert(model, T=T, calib=x, levels=4, rmpe=True, mode="streaming").snn
    onnx.checker.check_model(stream, full_check=True)
    assert not _nodes(stream, IF_OP)
    y, per_step = run(multi, x)
    got = StreamingRunner(stream, threads=1).run(x, T, output="y")
    assert got.shape == per_step.shape == (T, SAMPLES, K)
    np.testing.assert_allclose(got, per_step, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[-1], y, rtol=0, atol=1e-5)
