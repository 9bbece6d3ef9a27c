"""Log output of the libraries onnx-rmpe drives (onnx-graphsurgeon, onnxruntime).

Both print to the terminal on their own: onnx-graphsurgeon through its own logger
(``[W] colored module is not installed``, ``It looks like this model contains foldable
nodes that produce large outputs``), onnxruntime through its C++ default logger (graph
optimizer warnings such as ``UnsqueezeElimination`` from sessions onnx-graphsurgeon opens
to fold constants). They are quiet (errors only) unless asked for: the CLI's ``-v``, or,
for library users, the ``onnx_rmpe`` logger enabled at INFO or below.
"""

from __future__ import annotations

import logging

_explicit: bool | None = None


def quiet_dependencies(verbose: bool | None = None) -> None:
    """Errors only from onnx-graphsurgeon and onnxruntime, unless ``verbose``.

    ``verbose=None`` follows an earlier explicit choice (the CLI's ``-v``), else the level of
    the ``onnx_rmpe`` logger (verbose when it logs INFO).
    """
    global _explicit
    if verbose is not None:
        _explicit = verbose
    elif _explicit is not None:
        verbose = _explicit
    else:
        verbose = logging.getLogger("onnx_rmpe").isEnabledFor(logging.INFO)
    from onnx_graphsurgeon.logger import G_LOGGER

    G_LOGGER.severity = G_LOGGER.WARNING if verbose else G_LOGGER.ERROR
    try:
        import onnxruntime
    except ImportError:  # the runtime is an extra; nothing to quiet
        return
    onnxruntime.set_default_logger_severity(2 if verbose else 3)


__all__ = ["quiet_dependencies"]
