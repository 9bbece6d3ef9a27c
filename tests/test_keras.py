"""onnx_rmpe.keras: the QCFS layer (forward, straight-through gradient) and tf2onnx export."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from onnx_rmpe.runtime.neurons import qcfs_reference

pytest.importorskip("tensorflow", reason="tensorflow-cpu is not installed: Keras path untested")
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed: Keras export untested")


def test_import_onnx_rmpe_does_not_import_tensorflow():
    code = ("import sys, onnx_rmpe, onnx_rmpe.conversion, onnx_rmpe.modelio; "
            "sys.exit(int('tensorflow' in sys.modules or 'keras' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_qcfs_forward_matches_reference_and_gradient_passes(rng):
    import tensorflow as tf

    from onnx_rmpe.keras import QCFS
    layer = QCFS(levels=4, lam=2.0)
    x = rng.uniform(-1, 3, (8, 5)).astype(np.float32)
    np.testing.assert_allclose(layer(x).numpy(), qcfs_reference(x, 2.0, 4), atol=1e-6)
    xv = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer(xv, training=True))
    gx, glam = tape.gradient(y, [xv, layer.lam])
    inside = (x > 0.3) & (x < 1.7)          # away from the clip bounds: slope 1 (STE)
    np.testing.assert_allclose(gx.numpy()[inside], 1.0, atol=1e-5)
    assert float(glam) != 0.0
    assert QCFS.from_config(layer.get_config()).levels == 4


def test_export_sequential_and_recognize(rng, tmp_path):
    import keras

    from onnx_rmpe.keras import QCFS, export
    from onnx_rmpe.modelio import prepare, to_graph, to_model
    from onnx_rmpe.passes.normalize import normalize
    from onnx_rmpe.passes.recognize_qcfs import recognize_qcfs
    from tests.helpers import run
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, padding="same"),
                            QCFS(levels=8, lam=1.5), keras.layers.Flatten(),
                            keras.layers.Dense(3)])
    model = export(net, tmp_path / "k.onnx")
    assert (tmp_path / "k.onnx").is_file()
    assert [i.name for i in model.graph.input] == ["input"]
    x = rng.uniform(0, 1, (7, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(run(model, x)[0], net(x).numpy(), atol=1e-4)
    graph, _ = normalize(to_graph(prepare(model)))
    graph, changed = recognize_qcfs(graph)
    out = to_model(graph)
    assert changed and [n.op_type for n in out.graph.node].count("QCFS") == 1
    assert "Floor" not in [n.op_type for n in out.graph.node]
    np.testing.assert_allclose(run(out, x)[0], run(model, x)[0], atol=1e-4)
