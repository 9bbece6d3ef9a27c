"""RMPE calibration: layer-by-layer correction of the residual membrane potential error.

For each IF layer ``l`` in topological order, with layers ``1..l-1`` already calibrated:

1. run the QCFS ANN once over the calibration set for the targets ``E[a_ANN]`` (all layers
   in one pass, running sums only);
2. run segment ``l`` (see :mod:`onnx_rmpe.runtime.segments`) on the cached calibrated
   spikes of the layers it reads, simulate the neuron (bit-identical numpy IF) and sum
   ``r_SNN = theta * N(T) / T``;
3. set ``v_init_l += T * (E[a_ANN] - E[r_SNN])`` per neuron (or per channel);
4. run the segment again, simulating the neuron with the new and the old ``v_init``, keep
   the new one only for neurons (channels) where it lowers ``|E[a_ANN] - E[r_SNN]|`` (the
   closed form assumes a linear response that fails for neurons whose input barely
   varies, as at T <= 2), and cache the layer's spikes (bool, on disk) for the layers
   that read them; drop caches no later layer needs.

Spike caches hold one bit per spike (:mod:`onnx_rmpe.runtime.spike_cache`), in files read
and written with ``pread``/``pwrite`` (not memory-mapped, so they do not count in the
process's resident memory); a cache's file is deleted as soon as no later layer reads it,
and the peak disk use is reported (``CalibrationResult.spike_cache_bytes``).

Cost: one ANN pass, one pass of each segment (its input currents are kept for the second
simulation: in memory up to ``CURRENT_CACHE_BYTES``, else in a file up to
``DISK_CURRENT_BYTES``) and two neuron simulations per layer (numpy, in blocks that stay
in the CPU cache, :func:`onnx_rmpe.runtime.simulate.simulate_if`); the two spike trains
are merged on their packed bits. The check runs the ANN once and the readout segment on
the cached spikes; ``convert`` hands it the uncalibrated SNN's outputs from the threshold
search, so no whole SNN runs. Memory: the batches get the budget minus the process's
resident memory and the current cache (:func:`onnx_rmpe.runtime.memory.plan_batch_within`).

The package splits the job: :mod:`.targets` (the ANN targets), :mod:`.sweep` (the
layer-by-layer sweep), :mod:`.check` (the final check), :mod:`.results`, :mod:`.job`
(:func:`calibrate`).
"""

from __future__ import annotations

from onnx_rmpe.calibration.check import REJECT_Z
from onnx_rmpe.calibration.job import GRANULARITIES, calibrate
from onnx_rmpe.calibration.results import CalibrationResult, LayerReport
from onnx_rmpe.calibration.sweep import CURRENT_CACHE_BYTES
from onnx_rmpe.calibration.targets import CLIP_LEVELS, qcfs_with_levels

__all__ = ["CLIP_LEVELS", "CURRENT_CACHE_BYTES", "GRANULARITIES", "REJECT_Z", "CalibrationResult",
           "LayerReport", "calibrate", "qcfs_with_levels"]
