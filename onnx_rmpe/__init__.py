"""onnx-rmpe: ONNX ANN to ultra-low-latency spiking network converter (QCFS + RMPE)."""

from __future__ import annotations

__version__ = "0.1.0"
