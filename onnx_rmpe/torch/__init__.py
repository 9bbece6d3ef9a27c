"""Torch side of onnx-rmpe: the QCFS module and an ONNX interpreter for fine-tuning.

Importing this package imports torch (``pip install "onnx-rmpe[torch]"``); importing
``onnx_rmpe`` alone never does. Without torch the import fails with
:class:`~onnx_rmpe.errors.MissingDependencyError`, a user error the CLI reports plainly.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - exercised only without torch
    from onnx_rmpe.errors import MissingDependencyError
    raise MissingDependencyError("torch", "torch", "the torch support of onnx-rmpe") from None

from onnx_rmpe.torch.export import export
from onnx_rmpe.torch.interpreter import OnnxModule, write_back
from onnx_rmpe.torch.qcfs import QCFS, QCFSFunction, export_opsets, qcfs

__all__ = ["QCFS", "QCFSFunction", "OnnxModule", "export", "export_opsets", "qcfs",
           "write_back"]
