"""Run a model's batches on a Ray cluster: Ray Data ``map_batches`` over onnxruntime sessions.

The data set becomes a Ray Dataset (``ray.data.from_numpy``); a callable class holds one
predictor (one onnxruntime session, or a streaming runner) per Ray actor and maps each
batch of inputs to the predicted classes (per step for an SNN). Ray Data keeps the input
order (``DataContext.execution_options.preserve_order``), so the predictions line up with
the labels and the accuracies are those of the local path: the same sessions run the same
batches.

Which cluster: the one already connected in this process (``ray.init(...)`` called by the
user), else ``ray.init()``, which joins the cluster named by the ``RAY_ADDRESS``
environment variable (for example ``RAY_ADDRESS=ray://head:10001`` or ``auto``) or starts a
local one. Every worker node needs onnx-rmpe (with ``[cpu]`` or ``[gpu]``) installed.
Ray is an optional dependency (``pip install onnx-rmpe[ray]``), imported only here.

:func:`ray_batch_sums` serves the RMPE calibration's ANN-target pass: each of the caller's
batches becomes one block of the Ray Dataset (``ray.data.from_numpy`` of the list of
batches), each block one ``map_batches`` call that returns the batch's float64 sums, and
the driver adds them in the batches' order: the same batches, the same sessions and the
same float64 additions in the same order as the local loop, so the same targets bit for
bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from onnx_rmpe.errors import OptionError

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data), or an :class:`OptionError` naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data needs pyarrow and pandas ([data] extra)
    except ImportError as exc:
        raise OptionError("engine", f"'ray' needs Ray Data, which is not installed ({exc}); "
                                    "install it with: pip install 'onnx-rmpe[ray]'") from None
    return ray


class _Sums:
    """Ray Data UDF: one function per actor from a batch to a list of arrays (its sums)."""

    def __init__(self, factory: Callable[[], Callable[[np.ndarray], list[np.ndarray]]]) -> None:
        self.sums = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = batch["data"]
        out = {f"s{i}": value[None] for i, value in enumerate(self.sums(x))}
        out["rows"] = np.array([len(x)], np.int64)
        return out


class _Predict:
    """Ray Data UDF: one predictor per actor, built once from a picklable factory."""

    def __init__(self, factory: Callable[[], Callable[[np.ndarray], np.ndarray]]) -> None:
        self.predict = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        classes = self.predict(batch["data"]).argmax(-1)  # [N] or, per step, [T, N]
        return {"classes": classes.T if classes.ndim == 2 else classes[:, None]}


def _connect() -> Any:
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)  # joins RAY_ADDRESS if set, else local
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    return ray


def ray_classes(factory: Callable[[], Callable[[np.ndarray], np.ndarray]], x: np.ndarray, *,
                batch_size: int, cpus_per_actor: float = 1.0,
                actors: int | None = None) -> np.ndarray:
    """Predicted classes of every sample of ``x``, ``[N, steps]`` (steps = 1 for an ANN).

    ``factory()`` builds, on each actor, the function from a batch of inputs to logits
    (``[N, K]``, or ``[T, N, K]`` for an SNN); it must be picklable (a module-level
    function, or a ``functools.partial`` of one). ``actors``: at most that many actors
    (default: as many as the cluster's CPUs allow, starting from one).
    """
    ray = _connect()
    dataset = ray.data.from_numpy(np.ascontiguousarray(x))
    compute = ray.data.ActorPoolStrategy(min_size=1, max_size=actors)
    mapped = dataset.map_batches(_Predict, fn_constructor_args=(factory,),
                                 batch_size=batch_size, batch_format="numpy",
                                 compute=compute, num_cpus=cpus_per_actor)
    parts = [batch["classes"] for batch in mapped.iter_batches(batch_size=None,
                                                                 batch_format="numpy")]
    classes = np.concatenate(parts) if parts else np.zeros((0, 1), np.int64)
    if len(classes) != len(x):
        raise RuntimeError(f"Ray Data returned {len(classes)} predictions for {len(x)} samples")
    logger.info("ran %d samples on Ray (%s)", len(x), ray.get_runtime_context().gcs_address)
    return classes


def ray_batch_sums(factory: Callable[[], Callable[[np.ndarray], list[np.ndarray]]],
                   parts: list[np.ndarray], *, cpus_per_actor: float = 1.0,
                   actors: int | None = None) -> list[np.ndarray]:
    """``sum_b f(parts[b])[i]`` for every output ``i`` of ``f = factory()``, on Ray.

    Each part (one batch) is one block and one ``map_batches`` call; ``f`` (built once per
    actor) returns the batch's sums, which are added here in the parts' order, starting
    from the first part's, exactly as a local loop ``total = total + f(part)`` does.
    """
    ray = _connect()
    if not parts:
        raise ValueError("no batches to run")
    dataset = ray.data.from_numpy([np.ascontiguousarray(p) for p in parts])
    compute = ray.data.ActorPoolStrategy(min_size=1, max_size=actors)
    mapped = dataset.map_batches(_Sums, fn_constructor_args=(factory,), batch_size=None,
                                 batch_format="numpy", compute=compute, num_cpus=cpus_per_actor)
    totals: list[np.ndarray] | None = None
    rows: list[int] = []
    for block in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        keys = sorted((k for k in block if k != "rows"), key=lambda k: int(k[1:]))
        for j in range(len(block["rows"])):
            rows.append(int(block["rows"][j]))
            sums = [block[k][j] for k in keys]
            totals = sums if totals is None else [t + s for t, s in zip(totals, sums)]
    if rows != [len(p) for p in parts]:
        raise RuntimeError(f"Ray Data did not keep the batches (got rows {rows[:5]}..., "
                           f"expected {[len(p) for p in parts][:5]}...)")
    logger.info("summed %d batches on Ray (%s)", len(parts), ray.get_runtime_context().gcs_address)
    return totals
