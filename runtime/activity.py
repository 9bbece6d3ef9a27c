"""Spike activity of a multi-step SNN, recorded batch by batch with running sums.

The IF outputs (``theta * s(t)``, ``[T*N, ...]`` time-major) are exposed as extra graph
outputs of the multi-step model; each batch adds its spikes to

* ``per_step[layer]``: spikes per neuron and step, summed over the samples
  (``[T, *neurons]``, int64): firing rates and exact synaptic operations;
* ``silent[layer]`` / ``saturated[layer]``: (sample, neuron) pairs that fired never /
  at every step;

and the per-step logits to an :class:`AccuracyCounter`. Nothing else is kept, so memory
is one batch plus a fixed state, whatever the number of samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx

from onnx_rmpe.runtime.metrics import AccuracyCounter
from onnx_rmpe.runtime.progress import progress_bar
from onnx_rmpe.runtime.session import Device, active_provider, batches, make_session
from onnx_rmpe.runtime.statistics import expose_outputs

logger = logging.getLogger(__name__)


class SpikeCounter:
    """Running spike sums per layer; its state does not depend on the number of samples."""

    def __init__(self, T: int, shapes: dict[str, tuple[int, ...]]) -> None:
        self.T = T
        self.per_step = {name: np.zeros((T, *shape), np.int64) for name, shape in shapes.items()}
        self.silent = dict.fromkeys(shapes, 0)
        self.saturated = dict.fromkeys(shapes, 0)
        self.samples = 0

    def update(self, outputs: dict[str, np.ndarray], n: int) -> None:
        """Add one batch: ``outputs[layer]`` is the IF output ``[T*n, ...]``."""
        for name, out in outputs.items():
            spikes = np.asarray(out).reshape(self.T, n, *self.per_step[name].shape[1:]) != 0
            self.per_step[name] += spikes.sum(1)
            count = spikes.sum(0)
            self.silent[name] += int((count == 0).sum())
            self.saturated[name] += int((count == self.T).sum())
        self.samples += n

    def state_nbytes(self) -> int:
        return sum(a.nbytes for a in self.per_step.values())


def record(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray | None, *, spikes: Sequence[str],
           shapes: dict[str, tuple[int, ...]], T: int, per_step_output: str,
           batch_size: int = 128, threads: int | None = None, device: Device = "cpu",
           progress: bool = False) -> tuple[SpikeCounter, AccuracyCounter, str]:
    """Run ``model`` over ``x`` batch by batch; spike sums, per-step accuracy, provider.

    ``spikes``: the IF output tensors; ``shapes``: their per-sample shapes.
    """
    session = make_session(expose_outputs(model, list(spikes)), threads=threads, device=device)
    input_name = session.get_inputs()[0].name
    names = [per_step_output, *spikes]
    counter = SpikeCounter(T, {s: shapes[s] for s in spikes})
    accuracy = AccuracyCounter()
    with progress_bar(progress, "report") as bar:
        task = bar.add_task("SNN", total=len(x))
        for sl in batches(len(x), batch_size):
            values = session.run(names, {input_name: x[sl]})
            n = sl.stop - sl.start
            counter.update(dict(zip(spikes, values[1:])), n)
            if y is not None:
                accuracy.update(values[0], y[sl])
            bar.advance(task, n)
    return counter, accuracy, active_provider(session)


def record_streaming(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray | None, *,
                     spikes: Sequence[str], shapes: dict[str, tuple[int, ...]], T: int,
                     batch_size: int = 128, threads: int | None = None,
                     device: Device = "cpu",
                     progress: bool = False) -> tuple[SpikeCounter, AccuracyCounter, str]:
    """:func:`record` for a streaming (one step per call) SNN, stepped ``T`` times."""
    from onnx_rmpe.runtime.streaming import StreamingRunner

    runner = StreamingRunner(expose_outputs(model, list(spikes)), threads=threads,
                             device=device)
    counter = SpikeCounter(T, {s: shapes[s] for s in spikes})
    accuracy = AccuracyCounter()
    with progress_bar(progress, "report") as bar:
        task = bar.add_task("SNN (stepped)", total=len(x))
        for sl in batches(len(x), batch_size):
            runner.reset(sl.stop - sl.start)
            steps, logits = [], []
            for _ in range(T):
                logits.append(runner.step(x[sl]))
                steps.append([runner.outputs[s] for s in spikes])
            n = sl.stop - sl.start
            counter.update({s: np.concatenate([step[i] for step in steps])
                            for i, s in enumerate(spikes)}, n)
            if y is not None:
                accuracy.update(np.stack(logits), y[sl])
            bar.advance(task, n)
    return counter, accuracy, active_provider(runner.session)
