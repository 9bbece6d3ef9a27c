"""Keras 3 / TensorFlow support: a trainable QCFS layer and a safe tf2onnx export.

Importing this module imports Keras (and, through :func:`export`, TensorFlow and
tf2onnx); ``import onnx_rmpe`` alone never does. The QCFS layer computes::

    q = floor(x * L / lam + phi) / L
    y = clip(q, 0, 1) * lam

with a trainable scalar threshold ``lam``, ``L`` levels and shift ``phi`` (0.5). While
training, ``floor`` has a straight-through gradient (``u + stop_gradient(floor(u) - u)``);
at inference the layer is the plain formula, which tf2onnx writes as primitive ops
(Mul, Add, Floor, Clip or Max/Min, Mul) that ``passes.recognize_qcfs`` turns back into one
``onnx_rmpe::QCFS`` node, so :func:`onnx_rmpe.conversion.convert` reuses the trained
``lam`` and ``L``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_rmpe.errors import ConversionError, MissingDependencyError
from onnx_rmpe.runtime.neurons import DEFAULT_PHI

try:
    import keras
    from keras import ops
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("tensorflow", "tf", "onnx_rmpe.keras") from exc

logger = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="onnx_rmpe")
class QCFS(keras.layers.Layer):
    """Quantization-clip-floor-shift activation with a trainable threshold ``lam``.

    Args:
        levels: quantization levels ``L`` (at least 1).
        lam: initial threshold (positive); trainable.
        phi: shift inside the floor, 0.5 by default.
    """

    def __init__(self, levels: int = 8, lam: float = 8.0, phi: float = DEFAULT_PHI,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if levels < 1:
            raise ConversionError(f"QCFS levels must be at least 1, got {levels}")
        if not lam > 0:
            raise ConversionError(f"QCFS initial threshold lam must be > 0, got {lam}")
        self.levels, self.lam_init, self.phi = int(levels), float(lam), float(phi)

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.lam = self.add_weight(name="lam", shape=(),
                                   initializer=keras.initializers.Constant(self.lam_init),
                                   trainable=True)

    def call(self, x, training: bool | None = None):
        L = float(self.levels)
        # phi as a shape-[1] constant: tf2onnx's transpose optimizer fails on a scalar Add
        u = x * L / self.lam + ops.full((1,), self.phi, dtype=x.dtype)
        if training:
            q = u + ops.stop_gradient(ops.floor(u) - u)   # straight-through floor
        else:
            q = ops.floor(u)
        return ops.clip(q / L, 0.0, 1.0) * self.lam

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(levels=self.levels, lam=self.lam_init, phi=self.phi)
        return config


def _signature(model: keras.Model, input_signature) -> list:
    import tensorflow as tf
    if input_signature is not None:
        return list(input_signature)
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    if not shapes or shapes[0] is None:
        raise ConversionError("the Keras model has no known input shape; build it first or "
                              "pass input_signature=[tf.TensorSpec((None, ...), tf.float32)]")
    names = ["input"] if len(shapes) == 1 else [f"input_{i}" for i in range(len(shapes))]
    return [tf.TensorSpec((None,) + tuple(s[1:]), tf.float32, name=n)
            for s, n in zip(shapes, names)]


def export(model: keras.Model, path: str | os.PathLike | None, input_signature=None,
           opset: int = 17) -> onnx.ModelProto:
    """Export a Keras 3 model (Sequential or functional) to ONNX with tf2onnx.

    The model is traced through a ``tf.function`` in inference mode (``training=False``)
    and converted with ``tf2onnx.convert.from_function``, which sidesteps tf2onnx's
    failure on Sequential models. The batch axis stays dynamic; the input is named
    ``input`` (``input_<i>`` for several) unless ``input_signature`` names it. Returns the
    model and writes it to ``path`` if given.
    """
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("tf2onnx", "tf", "exporting a Keras model") from exc
    signature = _signature(model, input_signature)

    @tf.function(input_signature=signature)
    def forward(*inputs):
        out = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
        if isinstance(out, (list, tuple)):
            return {f"output_{i}": o for i, o in enumerate(out)}
        if isinstance(out, dict):
            return out
        return {"output": out}

    try:
        proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature,
                                                 opset=opset)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types
        raise ConversionError(f"tf2onnx could not export the Keras model "
                              f"'{model.name}': {type(exc).__name__}: {exc}") from exc
    proto = _static_reshape_targets(proto)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    logger.info("exported Keras model '%s' with tf2onnx (opset %d)", model.name, opset)
    return proto


def _static_reshape_targets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace computed Reshape targets (``Flatten`` writes ``Shape -> Gather -> Concat``)
    by constants ``[-1, d1, ...]`` where shape inference knows every dim but the batch.

    The Shape chain is left dangling (the converter's cleanup drops it); the model computes
    the same function for any batch size.
    """
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {vi.name: vi.type.tensor_type.shape for vi in
              list(inferred.graph.value_info) + list(inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] in inits:
            continue
        shape = shapes.get(node.output[0])
        dims = list(shape.dim) if shape is not None else []
        if len(dims) < 2 or not all(d.HasField("dim_value") for d in dims[1:]):
            continue
        name = f"{node.name or node.output[0]}_static_shape"
        target = np.array([-1] + [d.dim_value for d in dims[1:]], np.int64)
        model.graph.initializer.append(onnx.numpy_helper.from_array(target, name))
        node.input[1] = name
        fixed += 1
    if fixed:
        logger.debug("made %d Reshape target(s) static", fixed)
    return model


__all__ = ["QCFS", "export"]
