"""Export a PyTorch module to ONNX with settings the converter handles.

Both torch exporters are supported:

* ``dynamo=False`` (TorchScript-based, no onnxscript needed): opset ``opset`` (default
  17), a dynamic batch axis on every input and output.
* ``dynamo=True`` (``torch.export``-based, needs onnxscript): opset at least 18, weights
  stored inside the model (``external_data=False``), a dynamic batch through
  ``dynamic_shapes``. If torch cannot export the batch as dynamic, the model is exported
  with the example's batch size; :func:`onnx_rmpe.conversion.convert` frees a hard-coded
  batch (inputs, outputs and Reshape targets) itself.

Inputs are named ``input`` (``input_<i>`` for several), outputs ``output`` (``output_<i>``).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_rmpe.errors import ConversionError, MissingDependencyError

logger = logging.getLogger(__name__)

DYNAMO_MIN_OPSET = 18


def _as_tensors(example: Any) -> tuple:
    import torch
    items = example if isinstance(example, (tuple, list)) else (example,)
    return tuple(t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))
                 for t in items)


def _names(model, args: tuple) -> tuple[list[str], list[str]]:
    import torch
    with torch.no_grad():
        out = model(*args)
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    ins = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    outs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    return ins, outs


def _widen_batch(args: tuple) -> tuple:
    """torch.export specializes a batch of 1: give it an example batch of 2."""
    import torch
    return tuple(torch.cat([a, a]) if a.ndim and a.shape[0] == 1 else a for a in args)


def _dynamo(model, args: tuple, ins: Sequence[str], outs: Sequence[str], opset: int,
            f: io.BytesIO) -> None:
    import torch
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("onnxscript", "torch", "the dynamo exporter") from exc
    batch = torch.export.Dim("batch", min=1)
    shapes = tuple({0: batch} if a.ndim else {} for a in args)
    try:
        program = torch.onnx.export(model, _widen_batch(args), dynamo=True, opset_version=opset,
                                    input_names=list(ins), output_names=list(outs),
                                    dynamic_shapes=shapes, external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - fall back to a static batch
        logger.warning("dynamo export with a dynamic batch failed (%s: %s); exporting with "
                       "a fixed batch", type(exc).__name__, str(exc).splitlines()[0])
        program = torch.onnx.export(model, args, dynamo=True, opset_version=opset,
                                    input_names=list(ins), output_names=list(outs),
                                    external_data=False, verbose=False)
    f.write(program.model_proto.SerializeToString())


def export(model, example_input: Any, path: str | os.PathLike | None = None, *,
           dynamo: bool = False, opset: int | None = 17,
           input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None) -> onnx.ModelProto:
    """Export ``model`` (a ``torch.nn.Module``) for conversion; write it to ``path`` if given.

    ``example_input``: a tensor or array (or a tuple of them) with the model's input
    shape. ``opset=None``: the exporter's own default. ``input_names`` /
    ``output_names`` replace the default names. Returns the self-contained ModelProto
    (weights inside, checked by onnx).
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("torch", "torch", "exporting a PyTorch model") from exc
    args = _as_tensors(example_input)
    was_training = model.training
    model.eval()
    ins, outs = _names(model, args)
    ins, outs = list(input_names or ins), list(output_names or outs)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                _dynamo(model, args, ins, outs, max(opset or 0, DYNAMO_MIN_OPSET), buf)
            else:
                axes = {name: {0: "batch"} for name in list(ins) + list(outs)}
                torch.onnx.export(model, args, buf, dynamo=False, opset_version=opset,
                                  input_names=list(ins), output_names=list(outs),
                                  dynamic_axes=axes)
    except ConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types
        kind = "dynamo" if dynamo else "TorchScript"
        raise ConversionError(f"torch could not export the model ({kind} exporter): "
                              f"{type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    logger.info("exported %s with the %s exporter (opset %d)", type(model).__name__,
                "dynamo" if dynamo else "TorchScript", _opset(proto))
    return proto


def _opset(model: onnx.ModelProto) -> int:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)


__all__ = ["export"]
