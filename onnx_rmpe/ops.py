"""The vocabulary of the spiking network in ONNX: domain, op and attribute names.

The ground floor: ``passes/`` and ``runtime/`` both import it, it imports nothing of
onnx-rmpe. The ONNX function bodies of these ops live in :mod:`onnx_rmpe.runtime.neurons`.
"""

from __future__ import annotations

#: Custom op domain of the QCFS and IF neuron functions (model-local functions).
DOMAIN = "onnx_rmpe"
DOMAIN_VERSION = 1
#: Quantized clip-floor-shift activation (stage 1).
QCFS_OP = "QCFS"
#: Integrate-and-fire neuron over T steps merged into the batch (stage 2).
IF_OP = "IFNeuron"
#: IF neuron over one chunk of steps, membrane potential in and out (chunked form).
IF_CHUNK_OP = "IFNeuronChunk"
#: Start potential of an IF neuron, as a fraction of its threshold.
DEFAULT_PHI = 0.5
#: Bodies of the IF function: a Scan over time, or the steps written out.
IF_FORMS = ("scan", "unrolled")
#: Output name suffixes of an SNN: per-step running means (``[T, N, K]``), one step's
#: output of a streaming model, and the next value of a state (streaming/chunked forms).
PER_STEP_SUFFIX = "_per_step"
STEP_SUFFIX = "_step"
NEXT_SUFFIX = "_next"
#: The step-counter state of the streaming and chunked forms.
STEP_STATE = "step"

__all__ = ["DEFAULT_PHI", "DOMAIN", "DOMAIN_VERSION", "IF_CHUNK_OP", "IF_FORMS", "IF_OP",
           "NEXT_SUFFIX", "PER_STEP_SUFFIX", "QCFS_OP", "STEP_STATE", "STEP_SUFFIX"]
