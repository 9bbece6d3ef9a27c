"""The results of an RMPE calibration: per-layer figures and the calibrated SNN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx

logger = logging.getLogger(__name__)


@dataclass
class LayerReport:
    """Per-layer calibration figures (errors in activation units, mean over neurons)."""

    name: str
    neurons: int
    error_before: float
    error_after: float
    firing_rate: float
    mean_abs_v_init: float

@dataclass
class CalibrationResult:
    snn: onnx.ModelProto
    layers: list[LayerReport] = field(default_factory=list)
    T: int = 0
    samples: int = 0
    seconds: float = 0.0
    output_path: Path | None = None
    accepted: bool = True
    check: dict | None = None
    provider: str = ""
    #: Peak disk use of the spike caches (bytes; one bit per spike, freed when unused).
    spike_cache_bytes: int = 0

    def as_dict(self) -> dict:
        return {"T": self.T, "samples": self.samples, "seconds": round(self.seconds, 3),
                "spike_cache_bytes": self.spike_cache_bytes,
                "accepted": self.accepted, "check": self.check, "provider": self.provider,
                "layers": [vars(layer) for layer in self.layers]}
