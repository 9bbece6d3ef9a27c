"""Initial membrane potentials in NIR: a current on the first step only.

NIR 1.0 has no field for a neuron's initial potential: importers start every ``IF`` at
``v = 0``. The SNN starts at ``v(0) = v0 = phi * theta + v_init`` (``v_init`` the RMPE
calibration, per neuron). Since ``m(1) = v(0) + x(1)``, starting at 0 and adding ``v0`` to
the input current of the first step only gives the same dynamics, step for step::

    m(1) = 0 + (x(1) + v0)        m(t) = v(t-1) + (x(t) + 0)   for t >= 2

The first-step pulse ``p(t) = [t == 1]`` is built inside the graph, from the input alone,
by two "clock" IF neurons ``A`` and ``B`` fed constant currents (zero-weight layers with a
bias) and threshold ``2T``:

* ``A``: current ``2T + 1``: fires at every step ``t <= T`` (``m(t) = 2T + t``).
* ``B``: current ``2T - 1``, reset potential ``2T - 2``: silent at ``t = 1``, then fires at
  every step ``t = 2..T`` whether the importer resets by subtraction (``m(t) = 4T - t``)
  or to the reset potential (``m(t) = 4T - 3``).

An importer that ignores ``v_reset`` *and* resets to zero (Norse 1.1.0) gets ``B`` firing
at every other step: such an importer cannot run this SNN anyway (it needs reset by
subtraction). ``p = s_A - s_B`` (``B`` through a weight ``-1``) is exact; no potential
ever ties with a threshold, exceeds twice it or goes negative, so strict or non-strict
thresholds, multi-spike and lower bounds in importers do not change it. Each IF layer receives ``p``
through a layer whose weights are ``v0``: ``Affine(v0[:, None])`` for a flat layer, or for
a ``[C, H, W]`` layer a ``Conv2d`` of the ``[1, 1, 1]`` pulse with kernel ``v0`` flipped and
padding ``(H - 1, W - 1)`` (each output is one product ``p * v0``, so it is exact too).
The pulse is only valid for ``t <= 2T - 1``: the SNN is simulated for ``T`` steps.

Invariant: with every importer's ``v(0) = 0``, each IF layer integrates ``x(1) + v0`` at
step 1 and ``x(t)`` after, i.e. exactly the SNN's dynamics from ``v(0) = v0``.
"""

from __future__ import annotations

import logging

import numpy as np

from onnx_rmpe.nir_walk import NirParts

logger = logging.getLogger(__name__)

CLOCK = "clock"


def add_initial_potentials(parts: NirParts, T: int) -> int:
    """Feed each IF layer its initial potential as a first-step current; returns how many."""
    import nir

    todo = [(name, v0) for name, v0 in parts.neurons if np.any(v0 != 0)]
    if not todo:
        return 0
    pulse = _Clock(parts, T)
    for name, v0 in todo:
        inject = f"{name}.v0"
        if v0.ndim == 3:
            C, H, W = v0.shape
            if H != W:
                raise ValueError(f"IF layer '{name}': NIR 1.0 types need square maps, got "
                                 f"{H}x{W}")
            node = nir.Conv2d(input_shape=(1, 1), weight=v0[:, None, ::-1, ::-1].copy(),
                              stride=1, padding=(H - 1, W - 1), dilation=1, groups=1,
                              bias=np.zeros(C, np.float32))
            sources = pulse.spatial()
        elif v0.ndim == 1:
            node = nir.Affine(weight=v0[:, None].copy(), bias=np.zeros(v0.size, np.float32))
            sources = pulse.flat()
        else:
            raise ValueError(f"IF layer '{name}' has shape {v0.shape}; expected [F] or [C, H, W]")
        parts.add(inject, node, v0.shape)
        parts.edges += [(src, inject) for src in sources] + [(inject, name)]
    logger.info("initial potentials of %d IF layer(s) carried as a first-step current", len(todo))
    return len(todo)


class _Clock:
    """The pulse ``[t == 1]`` as two sources ``(A, -B)``, spatial ``[1,1,1]`` or flat ``[1]``."""

    def __init__(self, parts: NirParts, T: int) -> None:
        import nir

        self.parts = parts
        shape = parts.shapes["input"]
        self.is_spatial = len(shape) == 3
        unit = (1, 1, 1) if self.is_spatial else (1,)
        theta = np.full(unit, 2.0 * T, np.float32)
        for tag, current, reset in (("a", 2 * T + 1, 0.0), ("b", 2 * T - 1, 2.0 * T - 2)):
            src = self._constant(f"{CLOCK}.{tag}.current", shape, float(current))
            parts.add(f"{CLOCK}.{tag}", nir.IF(r=np.ones(unit, np.float32), v_threshold=theta,
                                               v_reset=np.full(unit, reset, np.float32)), unit)
            parts.edges.append((src, f"{CLOCK}.{tag}"))
        neg = self._weight(f"{CLOCK}.b.negated", -1.0, spatial=self.is_spatial)
        parts.edges.append((f"{CLOCK}.b", neg))
        self.sources = [f"{CLOCK}.a", neg]
        self._flat: list[str] | None = None if self.is_spatial else self.sources

    def _constant(self, name: str, shape: tuple, value: float) -> str:
        import nir

        bias = np.array([value], np.float32)
        if self.is_spatial:
            node = nir.Conv2d(input_shape=shape[1:], weight=np.zeros((1, *shape), np.float32),
                              stride=1, padding=0, dilation=1, groups=1, bias=bias)
        else:
            node = nir.Affine(weight=np.zeros((1, shape[0]), np.float32), bias=bias)
        self.parts.add(name, node, (1, 1, 1) if self.is_spatial else (1,))
        self.parts.edges.append(("input", name))
        return name

    def _weight(self, name: str, w: float, *, spatial: bool) -> str:
        import nir

        if spatial:
            node = nir.Conv2d(input_shape=(1, 1), weight=np.full((1, 1, 1, 1), w, np.float32),
                              stride=1, padding=0, dilation=1, groups=1,
                              bias=np.zeros(1, np.float32))
        else:
            node = nir.Affine(weight=np.full((1, 1), w, np.float32), bias=np.zeros(1, np.float32))
        self.parts.add(name, node, (1, 1, 1) if spatial else (1,))
        return name

    def spatial(self) -> list[str]:
        if not self.is_spatial:
            raise ValueError("a spatial IF layer in a network with a flat input")
        return self.sources

    def flat(self) -> list[str]:
        import nir

        if self._flat is None:
            self._flat = []
            for src in self.sources:
                name = f"{src}.flat"
                self.parts.add(name, nir.Flatten(input_type={"input": np.array([1, 1, 1])},
                                                 start_dim=0, end_dim=-1), (1,))
                self.parts.edges.append((src, name))
                self._flat.append(name)
        return self._flat
