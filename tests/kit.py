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

from onnx_rmpe.modelio import prepare, to_graph, to_model
from onnx_rmpe.passes.base import GraphPass
from tests.helpers import assert_numerically_equal


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
