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
        if path.suffix == ".npy":
            return Dataset(np.load(path, allow_pickle=False), None, str(path))
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise DataError(f"data file '{path}' has no array 'x' (it has: "
                                f"{', '.join(npz.files) or 'nothing'})")
            y = npz["y"] if "y" in npz.files else None
            return Dataset(npz["x"], y, str(path))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises several types
        raise DataError(f"cannot read data file '{path}': expected .npz with array 'x' or "
                        f".npy ({type(exc).__name__}: {exc})") from None


def _validate(ds: Dataset, require_labels: bool) -> Dataset:
    if ds.x.ndim < 1 or len(ds.x) == 0:
        raise DataError(f"data '{ds.source}': 'x' is empty")
    if not np.issubdtype(ds.x.dtype, np.number):
        raise DataError(f"data '{ds.source}': 'x' has dtype {ds.x.dtype}, expected numbers")
    ds.x = np.ascontiguousarray(ds.x, dtype=np.float32)
    if ds.y is not None:
        if len(ds.y) != len(ds.x):
            raise DataError(f"data '{ds.source}': {len(ds.x)} inputs but {len(ds.y)} labels")
        ds.y = np.asarray(ds.y).reshape(len(ds.y), -1)
        ds.y = ds.y.argmax(1) if ds.y.shape[1] > 1 else ds.y[:, 0].astype(np.int64)
    if require_labels and ds.y is None:
        raise DataError(f"data '{ds.source}' has no labels: add an array 'y' to the .npz")
    return ds


def check_fits(ds: Dataset, model: onnx.ModelProto) -> None:
    """Raise :class:`DataError` if ``ds.x`` cannot feed the model's (first) input."""
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inp.type.tensor_type.shape.dim]
    want = ["?" if d is None else d for d in dims]
    got = list(ds.x.shape)
    if len(got) != len(dims) or any(d is not None and d != g for d, g in zip(dims[1:], got[1:])):
        raise DataError(
            f"data '{ds.source}' has inputs of shape {got}, but model input '{inp.name}' "
            f"takes {want} (batch first); give the inputs in the model's layout")
