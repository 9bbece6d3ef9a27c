"""The shared test kit of the passes: one call runs a pass the way the pipeline does and
checks everything a rewrite must keep.

``check_pass(pass_, model, inputs, expect_changed)``:

* runs ``pass_`` (a :class:`~onnx_rmpe.passes.base.GraphPass`) on the prepared graph of
  ``model`` with its ``requires``/``ensures`` checks on;
* asserts it reported ``changed == expect_changed`` (a negative case must change nothing:
  the exported model is then byte-identical to the unchanged one);
* runs the full ONNX checker on the result and compares it with the original on
  ``inputs`` in onnxruntime, and (``reference=True``) in the onnx reference evaluator.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_rmpe.modelio import prepare, to_graph, to_model
from onnx_rmpe.ops import DOMAIN, IF_OP
from onnx_rmpe.passes.base import GraphPass
from tests.helpers import assert_numerically_equal, run


def check_pass(pass_: GraphPass, model: onnx.ModelProto, inputs: np.ndarray | None,
               expect_changed: bool, *, atol: float = 1e-5,
               reference: bool = True) -> onnx.ModelProto:
    """Run ``pass_`` on ``model`` with its checks; assert the outcome; return the result."""
    prepared = prepare(model)
    graph, changed = pass_(to_graph(prepared), check=True)
    assert changed is expect_changed, (pass_, changed, pass_.skipped)
    result = to_model(graph, keep_shapes=True)
    if not expect_changed:
        untouched = to_model(to_graph(prepared), keep_shapes=True)
        assert result.SerializeToString() == untouched.SerializeToString(), pass_
    if inputs is not None:
        assert_numerically_equal(prepared, result, inputs, atol, reference=reference)
    else:
        onnx.checker.check_model(result, full_check=True)
    return result


def neurons(model: onnx.ModelProto, op: str = IF_OP) -> list[onnx.NodeProto]:
    """The ``onnx_rmpe`` nodes of type ``op`` (IF neurons by default), in graph order."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == op]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names)
    return model


def random_v_init(snn: onnx.ModelProto, x: np.ndarray, rng) -> onnx.ModelProto:
    """A copy of ``snn`` with per-neuron v_init in [-theta/2, theta/2) (what RMPE
    calibration writes), shaped like one sample of each layer."""
    spikes = [n.output[0] for n in neurons(snn)]
    shapes = [a.shape[1:] for a in run(with_outputs(snn, spikes), x[:1])[-len(spikes):]]
    model = onnx.ModelProto.FromString(snn.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    for node, shape in zip(neurons(model), shapes):
        theta = numpy_helper.to_array(inits[node.input[1]])
        value = ((rng.random(shape) - 0.5) * theta).astype(np.float32)
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(value, node.input[2]))
    return model
