"""Calibration and evaluation data: ``.npz`` with ``x`` (and optional ``y``) or ``.npy``.

Inputs must be given exactly as the model takes them (model layout); they are cast to
float32. The trailing dimensions are checked against the model's input so a mistake is
reported with both shapes, not as an onnxruntime error deep inside a run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_rmpe.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Inputs ``x`` (float32, model layout) and optional integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray | None = None
    source: str = "<array>"

    def __len__(self) -> int:
        return len(self.x)

    def head(self, n: int | None) -> Dataset:
        if n is None or n >= len(self):
            return self
        return Dataset(self.x[:n], None if self.y is None else self.y[:n], self.source)


def load_data(data, *, require_labels: bool = False) -> Dataset:
    """A :class:`Dataset` from a path, an array, an ``(x, y)`` tuple or a Dataset."""
    if isinstance(data, Dataset):
        ds = data
    elif isinstance(data, (str, os.PathLike)):
        ds = _load_file(Path(data))
    elif isinstance(data, tuple):
        ds = Dataset(np.asarray(data[0]), None if data[1] is None else np.asarray(data[1]))
    else:
        ds = Dataset(np.asarray(data))
    return _validate(ds, require_labels)


def _load_file(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)  # sniffs .npy/.npz whatever the suffix
    except Exception as exc:  # noqa: BLE001 - numpy raises several types
        raise DataError(f"cannot read data file '{path}': expected .npz with array 'x' or "
                        f".npy ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, np.ndarray):
        return Dataset(loaded, None, str(path))
    with loaded as npz:
        if "x" not in npz.files:
            raise DataError(f"data file '{path}' has no array 'x' (it has: "
                            f"{', '.join(npz.files) or 'nothing'})")
        try:
            y = npz["y"] if "y" in npz.files else None
            return Dataset(npz["x"], y, str(path))
        except Exception as exc:  # noqa: BLE001 - e.g. an object array (pickle refused)
            raise DataError(f"cannot read data file '{path}': {type(exc).__name__}: "
                            f"{exc}") from None


def _validate(ds: Dataset, require_labels: bool) -> Dataset:
    if ds.x.ndim == 0:
        raise DataError(f"data '{ds.source}': 'x' is a scalar; expected a batch of inputs "
                        "(first axis: samples)")
    if len(ds.x) == 0:
        raise DataError(f"data '{ds.source}': 'x' is empty")
    if not np.issubdtype(ds.x.dtype, np.number) or np.iscomplexobj(ds.x):
        raise DataError(f"data '{ds.source}': 'x' has dtype {ds.x.dtype}, expected numbers")
    ds.x = np.ascontiguousarray(ds.x, dtype=np.float32)
    bad = ~np.isfinite(ds.x)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), ds.x.shape)
        raise DataError(f"data '{ds.source}': 'x' holds {int(bad.sum())} NaN or infinite "
                        f"value(s), the first at index {tuple(int(i) for i in first)}; "
                        "clean or drop those samples")
    if ds.y is not None:
        ds.y = _labels(ds)
    if require_labels and ds.y is None:
        raise DataError(f"data '{ds.source}' has no labels: add an array 'y' to the .npz")
    return ds


def _labels(ds: Dataset) -> np.ndarray:
    """Integer class labels, one per input (one-hot rows become their class)."""
    y = np.asarray(ds.y)
    if y.ndim == 0:
        raise DataError(f"data '{ds.source}': 'y' is a scalar; expected one label per input")
    if len(y) != len(ds.x):
        raise DataError(f"data '{ds.source}': {len(ds.x)} inputs but {len(y)} labels")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
            or y.dtype == bool):
        raise DataError(f"data '{ds.source}': labels 'y' have dtype {y.dtype}; expected "
                        "integer class indices (or one-hot rows)")
    y = y.reshape(len(y), -1)
    if y.shape[1] > 1:
        return y.argmax(1).astype(np.int64)
    y = y[:, 0].astype(np.float64)
    wrong = ~np.isfinite(y) | (y != np.round(y)) | (y < 0)
    if wrong.any():
        i = int(np.argmax(wrong))
        raise DataError(f"data '{ds.source}': {int(wrong.sum())} label(s) are not class "
                        f"indices (non-negative integers), the first at index {i}: {y[i]!r}")
    return y.astype(np.int64)


def check_labels(ds: Dataset, classes: int | None) -> None:
    """Raise :class:`DataError` if a label is not below the model's number of classes."""
    if ds.y is None or not classes:
        return
    high = ds.y >= classes
    if high.any():
        i = int(np.argmax(high))
        raise DataError(f"data '{ds.source}': {int(high.sum())} label(s) are outside 0.."
                        f"{classes - 1} (the model has {classes} outputs), the first at index "
                        f"{i}: {int(ds.y[i])}")


def check_fits(ds: Dataset, model: onnx.ModelProto) -> None:
    """Raise :class:`DataError` if ``ds.x`` cannot feed the model's (first) input."""
    inits = {i.name for i in model.graph.initializer}
    data_inputs = [i for i in model.graph.input if i.name not in inits]
    if len(data_inputs) != 1:
        names = ", ".join(i.name for i in data_inputs)
        raise DataError(f"the model has {len(data_inputs)} inputs ({names}); onnx-rmpe runs "
                        "models with exactly one (batch-first) input")
    inp = data_inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inp.type.tensor_type.shape.dim]
    want = ["?" if d is None else d for d in dims]
    got = list(ds.x.shape)
    if len(got) != len(dims) or any(d is not None and d != g for d, g in zip(dims[1:], got[1:])):
        raise DataError(
            f"data '{ds.source}' has inputs of shape {got}, but model input '{inp.name}' "
            f"takes {want} (batch first); give the inputs in the model's layout")
