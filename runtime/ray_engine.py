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


class _Predict:
    """Ray Data UDF: one predictor per actor, built once from a picklable factory."""

    def __init__(self, factory: Callable[[], Callable[[np.ndarray], np.ndarray]]) -> None:
        self.predict = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        classes = self.predict(batch["data"]).argmax(-1)  # [N] or, per step, [T, N]
        return {"classes": classes.T if classes.ndim == 2 else classes[:, None]}


def ray_classes(factory: Callable[[], Callable[[np.ndarray], np.ndarray]], x: np.ndarray, *,
                batch_size: int, cpus_per_actor: float = 1.0,
                actors: int | None = None) -> np.ndarray:
    """Predicted classes of every sample of ``x``, ``[N, steps]`` (steps = 1 for an ANN).

    ``factory()`` builds, on each actor, the function from a batch of inputs to logits
    (``[N, K]``, or ``[T, N, K]`` for an SNN); it must be picklable (a module-level
    function, or a ``functools.partial`` of one). ``actors``: at most that many actors
    (default: as many as the cluster's CPUs allow, starting from one).
    """
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)  # joins RAY_ADDRESS if set, else local
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
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
