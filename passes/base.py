"""Shared plumbing for passes: the pass contract, a pipeline runner, small graph helpers.

The contract, in the manner of onnx-ir's pass infrastructure: a pass is a
:class:`GraphPass` with a ``name``, its options given to the constructor, and
``call(graph) -> PassResult(graph, changed)``; optional ``requires(graph)`` and
``ensures(graph)`` check the invariants its docstring states (they raise
:class:`~onnx_rmpe.errors.InvariantError`). A rule that does not apply records why with
:func:`skip` ("BatchNormalization bn3 kept: ..."); the reasons are logged at DEBUG and kept
on the pass (``skipped``). Each pass module keeps its function entry (``fold_batchnorm(graph)``
etc.); :class:`FunctionPass` adapts such a function to the contract.

:class:`Sequential` runs passes in order and logs what each changed (DEBUG). It checks the
invariants when asked (``check=True``, or the environment variable ``ONNX_RMPE_CHECK=1``,
which the tests and ``--debug`` runs set). User errors (:class:`ConversionError`) pass
through; any other exception becomes a :class:`~onnx_rmpe.errors.PassError` (an internal
error, not a user error) naming the pass and the passes that ran before it, chained to the
original exception so its traceback is kept.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import onnx_graphsurgeon as gs

from onnx_rmpe.errors import ConversionError, InvariantError, PassError

logger = logging.getLogger(__name__)

#: Set to 1 to run every pass's ``requires``/``ensures`` checks (tests, ``--debug``).
CHECK_ENV = "ONNX_RMPE_CHECK"


class PassResult(NamedTuple):
    graph: gs.Graph
    changed: bool

    @property
    def modified(self) -> bool:
        """onnx-ir's name for ``changed``."""
        return self.changed


_SKIPS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "onnx_rmpe_pass_skips", default=None)


def skip(reason: str) -> None:
    """Record why a candidate of the running pass was left as it is (logged at DEBUG)."""
    logger.debug("skipped: %s", reason)
    found = _SKIPS.get()
    if found is not None:
        found.append(reason)


class GraphPass:
    """Base of all passes: a name, options from the constructor, ``call``, checks.

    Subclasses implement :meth:`call`; :meth:`requires` and :meth:`ensures` are optional
    and raise :class:`InvariantError`. Calling the pass object runs the checks when
    ``check`` is true and collects the reasons recorded with :func:`skip` in ``skipped``.
    """

    name: str = ""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.skipped: list[str] = []

    def call(self, graph: gs.Graph) -> PassResult:
        raise NotImplementedError

    def requires(self, graph: gs.Graph) -> None:
        """Check the preconditions (raise :class:`InvariantError`); default: none."""

    def ensures(self, graph: gs.Graph) -> None:
        """Check the invariant the pass establishes (raise :class:`InvariantError`)."""

    def __call__(self, graph: gs.Graph, *, check: bool = False) -> PassResult:
        self.skipped = []
        token = _SKIPS.set(self.skipped)
        try:
            if check:
                self.requires(graph)
            result = self.call(graph)
            if check:
                self.ensures(result.graph)
        finally:
            _SKIPS.reset(token)
        return result

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({self.name}{', ' if opts else ''}{opts})"


class FunctionPass(GraphPass):
    """A pass module's function entry ``fn(graph, **options) -> PassResult`` as a pass.

    ``ensures``: an optional ``graph -> None`` check of the pass's invariant.
    """

    def __init__(self, name: str, fn: Callable[..., PassResult], *,
                 ensures: Callable[[gs.Graph], None] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.name = name
        self.fn = fn
        self._ensures = ensures

    def call(self, graph: gs.Graph) -> PassResult:
        return self.fn(graph, **self.options)

    def ensures(self, graph: gs.Graph) -> None:
        if self._ensures is not None:
            self._ensures(graph)


def checks_enabled() -> bool:
    return os.environ.get(CHECK_ENV, "") not in ("", "0")


class Sequential(GraphPass):
    """Run passes in order; log what each changed and why candidates were skipped."""

    name = "sequential"

    def __init__(self, *passes: GraphPass, check: bool | None = None) -> None:
        super().__init__()
        self.passes = passes
        self.check = check

    def call(self, graph: gs.Graph) -> PassResult:
        check = checks_enabled() if self.check is None else self.check
        done: list[str] = []
        changed = False
        for p in self.passes:
            try:
                graph, did = p(graph, check=check)
            except ConversionError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised with context and traceback
                raise PassError(p.name, done, exc) from exc
            logger.debug("pass %s: %s%s", p.name, "changed" if did else "no change",
                         f" ({len(p.skipped)} candidate(s) skipped)" if p.skipped else "")
            for reason in p.skipped:
                logger.debug("pass %s: %s", p.name, reason)
            changed = changed or did
            done.append(p.name)
        return PassResult(graph, changed)


def as_pass(item: GraphPass | tuple[str, Callable[[gs.Graph], PassResult]]) -> GraphPass:
    """A pass object, or a ``(name, function)`` pair (the older form) wrapped as one."""
    if isinstance(item, GraphPass):
        return item
    name, fn = item
    return FunctionPass(name, fn)


def run_passes(graph: gs.Graph, passes: Iterable[GraphPass | tuple[str, Callable]], *,
               check: bool | None = None) -> gs.Graph:
    """Run ``passes`` in order (see :class:`Sequential`); returns the graph."""
    return Sequential(*(as_pass(p) for p in passes), check=check)(graph).graph


def require(condition: bool, message: str) -> None:
    """Raise :class:`InvariantError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise InvariantError(message)


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor, or None for a variable (or a missing optional input)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def is_zero(tensor: gs.Tensor) -> bool:
    """Whether ``tensor`` is a constant scalar (any rank, one element) equal to 0."""
    v = const_value(tensor)
    return v is not None and v.size == 1 and float(v.reshape(())) == 0.0


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` read ``new`` instead."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def name_nodes(graph: gs.Graph) -> bool:
    """Give every node a unique, stable name (exporters often leave them empty)."""
    seen: set[str] = set()
    changed = False
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}_{i}" if not node.name else f"{node.name}_{i}"
            changed = True
        seen.add(node.name)
    return changed


class Names:
    """Fresh tensor and node names that do not clash with the graph's."""

    def __init__(self, graph: gs.Graph) -> None:
        self.used = set(graph.tensors().keys()) | {n.name for n in graph.nodes}

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def classify_tensors(graph: gs.Graph) -> dict[str, str]:
    """Label each tensor ``data`` (carries the batch), ``meta`` (shape arithmetic) or ``const``.

    Graph inputs are data; Shape/Size outputs are meta; a node's outputs are data if any
    input is data (Reshape's and Expand's shape inputs excepted), meta if any input is
    meta, else const.
    """
    kinds: dict[str, str] = {}
    for t in graph.inputs:
        kinds[t.name] = "data"
    for node in graph.toposort().nodes:
        ins = [kinds.get(t.name, "const") for t in node.inputs if t.name]
        if node.op in ("Shape", "Size"):
            kind = "meta"
        elif "data" in (ins[:1] if node.op in ("Reshape", "Expand", "Tile") else ins):
            kind = "data"
        elif "meta" in ins:
            kind = "meta"
        else:
            kind = "const"
        for t in node.outputs:
            kinds[t.name] = kind
    return kinds
