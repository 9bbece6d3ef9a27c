"""Metrics of model outputs: accuracy and per-step accuracy curves."""

from __future__ import annotations

import numpy as np


class AccuracyCounter:
    """Counts correct top-1 predictions batch by batch, for one output or per step."""

    def __init__(self) -> None:
        self.correct: np.ndarray | None = None
        self.total = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """``logits`` is ``[N, K]`` or ``[T, N, K]`` (then one count per step)."""
        self.update_classes(logits.argmax(-1), labels)

    def update_classes(self, classes: np.ndarray, labels: np.ndarray) -> None:
        """``classes`` (predicted) is ``[N]`` or ``[T, N]`` (then one count per step)."""
        hits = (classes == labels).sum(-1)
        hits = np.atleast_1d(hits).astype(np.int64)
        self.correct = hits if self.correct is None else self.correct + hits
        self.total += len(labels)

    def accuracy(self) -> list[float]:
        if self.correct is None or self.total == 0:
            return []
        return [float(c) / self.total for c in self.correct]

