"""onnx-rmpe: ONNX ANN to ultra-low-latency spiking network converter (QCFS + RMPE).

Public pipeline functions (one per job)::

    from onnx_rmpe import convert, calibrate, evaluate, inspect_model
    result = convert("model.onnx", T=4, calib="calib.npz", output="model.snn.onnx")
"""

from __future__ import annotations

from onnx_rmpe.calibration import CalibrationResult, calibrate  # noqa: E402
from onnx_rmpe.conversion import ConversionResult, convert  # noqa: E402
from onnx_rmpe.errors import ConversionError, UnsupportedOpError  # noqa: E402
from onnx_rmpe.evaluation import EvaluationResult, evaluate  # noqa: E402
from onnx_rmpe.inspect import ModelInfo, inspect_model  # noqa: E402
from onnx_rmpe.nir import NirExportResult, export_nir  # noqa: E402
from onnx_rmpe.reporting import ReportResult, report  # noqa: E402
from onnx_rmpe.version import __version__  # noqa: E402

__all__ = [
    "CalibrationResult", "ConversionError", "ConversionResult", "EvaluationResult", "ModelInfo",
    "UnsupportedOpError", "calibrate", "convert", "evaluate", "inspect_model", "__version__",
    "ReportResult", "report",
    "NirExportResult", "export_nir",
]
