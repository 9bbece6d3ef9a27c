"""Moved to the package :mod:`onnx_rmpe.calibration` (targets, sweep, check, job).

This module keeps the old import paths working (``from onnx_rmpe.calibrate import ...``).
"""

from __future__ import annotations

from onnx_rmpe.calibration.check import REJECT_Z, _check, _outputs, _warn_silent
from onnx_rmpe.calibration.job import GRANULARITIES, _check_kinds, _snn_settings, calibrate
from onnx_rmpe.calibration.results import CalibrationResult, LayerReport
from onnx_rmpe.calibration.sweep import (
    CURRENT_CACHE_BYTES,
    SweepSettings,
    _granular,
    _merge,
    _simulate,
    _sweep,
)
from onnx_rmpe.calibration.targets import CLIP_LEVELS, _ann_means, qcfs_with_levels
from onnx_rmpe.runtime.feeder import SegmentFeeder as _Feeder
from onnx_rmpe.runtime.feeder import ram_cache as _ram_cache

__all__ = ["CLIP_LEVELS", "CURRENT_CACHE_BYTES", "GRANULARITIES", "REJECT_Z", "CalibrationResult",
           "LayerReport", "SweepSettings", "_Feeder", "_ann_means", "_check", "_check_kinds",
           "_granular", "_merge", "_outputs", "_ram_cache", "_simulate", "_snn_settings", "_sweep",
           "_warn_silent", "calibrate", "qcfs_with_levels"]
