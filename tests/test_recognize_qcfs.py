"""recognize_qcfs: primitive-op QCFS patterns (torch, tf2onnx forms) become one QCFS node."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from onnx_rmpe.modelio import prepare, to_graph, to_model
from onnx_rmpe.passes.normalize import normalize
from onnx_rmpe.passes.recognize_qcfs import recognize_qcfs
from onnx_rmpe.runtime.neurons import qcfs_reference
from tests.helpers import assert_numerically_equal, run

LAM, L = 2.5, 8
HEAD = ('<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[N, 4, 3, 3] x) => (float[N, 4, 3, 3] y) {\n")

FORMS = {
    # torch (both exporters): Mul(L) Div(lam) Add(phi) Floor Div(L) Clip(0, 1) Mul(lam)
    "torch": """
        a = Mul(x, Lc)
        b = Div(a, lam)
        c = Add(b, phi)
        f = Floor(c)
        d = Div(f, Lc)
        e = Clip(d, zero, one)
        y = Mul(e, lam)""",
    # tf2onnx: folded scale, Transpose inside, Min/Max clip, Mul by 1/L
    "tf2onnx": """
        a = Mul(x, s)
        c = Add(a, phi)
        t = Transpose<perm = [0, 1, 3, 2]>(c)
        f = Floor(t)
        d = Mul(f, invL)
        e = Min(d, one)
        g = Max(e, zero)
        t2 = Transpose<perm = [0, 1, 3, 2]>(g)
        y = Mul(lam, t2)""",
    # straight-through floor left in the graph (u + (floor(u) - u)), clip before the scale
    "straight_through": """
        a = Mul(x, s)
        c = Add(a, phi)
        f0 = Floor(c)
        z = Sub(f0, c)
        f = Add(c, z)
        e = Clip(f, zero, Lc)
        y = Mul(e, lamL)""",
}
CONSTS = {"Lc": L, "lam": LAM, "phi": 0.5, "zero": 0.0, "one": 1.0, "s": L / LAM,
          "invL": 1.0 / L, "lamL": LAM / L,
          "cap": 0.55}


def model_for(body: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEAD + body + "\n}")
    used = set(re.findall(r"\w+", body))
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.array(v, np.float32), k)
                                   for k, v in CONSTS.items() if k in used)
    onnx.checker.check_model(model)
    return model


def recognized(model: onnx.ModelProto):
    graph, _ = normalize(to_graph(prepare(model)))   # folds exporters' Constant nodes
    graph, changed = recognize_qcfs(graph)
    return to_model(graph), changed


@pytest.mark.parametrize("form", FORMS)
def test_pattern_becomes_one_qcfs(form, rng):
    model = model_for(FORMS[form])
    out, changed = recognized(model)
    assert changed
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("QCFS") == 1 and "Floor" not in ops and "Clip" not in ops, ops
    node = next(n for n in out.graph.node if n.op_type == "QCFS")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["levels"] == L and attrs["phi"] == pytest.approx(0.5)
    lam = next(i for i in out.graph.initializer if i.name == node.input[1])
    assert float(onnx.numpy_helper.to_array(lam)) == pytest.approx(LAM)
    x = rng.uniform(-1, 4, (5, 4, 3, 3)).astype(np.float32)
    assert_numerically_equal(model, out, x, atol=1e-5)
    np.testing.assert_allclose(run(out, x)[0], qcfs_reference(x, LAM, L), atol=1e-5)


def test_folded_scale_gets_rescale_mul(rng):
    """tf2onnx can fold x * L / lam into the Conv before: the pass keeps the math."""
    body = """
        c = Add(x, phi)
        f = Floor(c)
        d = Mul(f, invL)
        e = Clip(d, zero, one)
        y = Mul(e, lam)"""
    model = model_for(body)
    out, changed = recognized(model)
    assert changed and [n.op_type for n in out.graph.node] == ["Mul", "QCFS"]
    x = rng.uniform(-1, 10, (5, 4, 3, 3)).astype(np.float32)
    assert_numerically_equal(model, out, x, atol=1e-5)


@pytest.mark.parametrize("body", [
    # no clip: floor(x * 4) / 4 is a quantizer, not a QCFS
    """
        a = Mul(x, Lc)
        f = Floor(a)
        y = Div(f, Lc)""",
    # clipped between grid points (0.55 is no multiple of 1/8): not lam * clip(n / L, 0, 1)
    """
        a = Mul(x, s)
        c = Add(a, phi)
        f = Floor(c)
        d = Div(f, Lc)
        e = Clip(d, zero, cap)
        y = Mul(e, lam)""",
])
def test_other_floors_left_alone(body):
    model = model_for(body)
    out, changed = recognized(model)
    assert not changed
    assert "Floor" in [n.op_type for n in out.graph.node]
    assert "QCFS" not in [n.op_type for n in out.graph.node]


def test_neighbouring_scalar_ops_stay_outside(rng):
    """A scalar Mul of the next layer after the pattern is not folded into lam."""
    body = FORMS["torch"].replace("y = Mul(e, lam)", "m = Mul(e, lam)\n        y = Mul(m, phi)")
    model = model_for(body)
    out, changed = recognized(model)
    assert changed
    assert [n.op_type for n in out.graph.node] == ["QCFS", "Mul"]
    x = rng.uniform(-1, 4, (5, 4, 3, 3)).astype(np.float32)
    assert_numerically_equal(model, out, x, atol=1e-5)


def test_torch_qcfs_module_both_exporters(rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from onnx_rmpe.torch.export import export

    class QCFS(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lam = torch.nn.Parameter(torch.tensor(LAM))

        def forward(self, x):
            u = x * L / self.lam + 0.5
            q = u + (torch.floor(u) - u).detach()
            return torch.clamp(q / L, 0, 1) * self.lam

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), QCFS(),
                              torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x = rng.uniform(0, 1, (6, 1, 2, 2)).astype(np.float32)
    for dynamo in (False, True):
        model = export(net, x[:1], None, dynamo=dynamo)
        out, changed = recognized(model)
        assert changed and [n.op_type for n in out.graph.node].count("QCFS") == 1
        assert_numerically_equal(model, out, x, atol=1e-4)
