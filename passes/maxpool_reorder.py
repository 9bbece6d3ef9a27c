"""Move max pooling in front of the QCFS activation it follows.

QCFS is monotone non-decreasing, so for any pooling window ``MaxPool(h(z)) = h(MaxPool(z))``
(padding is ignored by MaxPool, so it cannot break this). After the swap the pool works on
the membrane input currents, where the spiking network pools their running sums (the
cumulative form, see ``qcfs_to_if``) and the neuron behind it integrates exactly
``T * MaxPool(mean input)``.

Invariant: the graph computes the same function exactly; no MaxPool or GlobalMaxPool
reads the output of a QCFS node that has no other consumer.
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from onnx_rmpe.ops import DOMAIN, QCFS_OP
from onnx_rmpe.passes.base import PassResult, producer, skip

logger = logging.getLogger(__name__)

POOLS = ("MaxPool", "GlobalMaxPool")


def maxpool_reorder(graph: gs.Graph) -> PassResult:
    """Swap every ``QCFS -> MaxPool`` pair whose QCFS output feeds only the pool."""
    swapped = 0
    for pool in [n for n in graph.nodes if n.op in POOLS]:
        q_out = pool.inputs[0]
        qcfs = producer(q_out)
        if (qcfs is None or qcfs.op != QCFS_OP or qcfs.domain != DOMAIN
                or len(q_out.outputs) != 1 or q_out in graph.outputs or len(pool.outputs) != 1):
            if qcfs is not None and qcfs.op == QCFS_OP and qcfs.domain == DOMAIN:
                skip(f"{pool.op} {pool.name} kept behind QCFS {qcfs.name}: the activation "
                     "also feeds other nodes or a graph output (or the pool has indices)")
            continue
        pre, pooled = qcfs.inputs[0], pool.outputs[0]
        mid = gs.Variable(f"{pooled.name}_pre", dtype=pooled.dtype)
        pool.outputs[0] = mid       # the pool now yields the pooled pre-activation
        qcfs.outputs[0] = pooled    # and the activation the tensor the pool used to
        pool.inputs[0] = pre
        qcfs.inputs[0] = mid
        swapped += 1
    if swapped:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        logger.info("moved %d max pool(s) in front of their activation", swapped)
    return PassResult(graph, swapped > 0)
