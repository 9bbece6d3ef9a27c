"""User-facing errors. Every error a user can cause derives from :class:`ConversionError`.

Messages are built inside the exception classes and name the thing at fault (file,
node, op, option) and the fix, so the CLI can print them without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class ConversionError(Exception):
    """Root of every user error raised by onnx-rmpe."""


class ModelLoadError(ConversionError):
    """The model file cannot be read or is not a valid ONNX model."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot load model '{path}': {reason}")
        self.path = path


class DataError(ConversionError):
    """Calibration or evaluation data does not fit the model."""


class OptionError(ConversionError):
    """An option has a value that cannot work.

    ``option`` is the name of the API parameter (``T``, ``batch_size``); the CLI shows the
    flag that sets it (``--T``, ``--batch-size``) instead.
    """

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"option {option}: {reason}")
        self.option = option
        self.reason = reason


class OutputPathError(OptionError):
    """An output path would overwrite an input, collide with another output, or cannot be
    written."""

    def __init__(self, option: str, path, reason: str) -> None:
        super().__init__(option, f"cannot write '{path}': {reason}")
        self.path = path


class MemoryBudgetError(OptionError):
    """A run would not fit the memory budget even one sample at a time."""


class DiskSpaceError(ConversionError):
    """Calibration's spike and current caches would not fit the free disk space."""

    def __init__(self, directory: str, needed: int, free: int) -> None:
        super().__init__(
            f"not enough disk space in '{directory}' for the calibration caches: the next "
            f"one needs {needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free (with a "
            f"margin of {DISK_MARGIN / 2**20:.0f} MiB); point TMPDIR to a larger disk, or "
            "use fewer calibration samples (--calib-samples) or a smaller T")
        self.directory, self.needed, self.free = directory, needed, free


#: Disk space the calibration caches leave free for everything else.
DISK_MARGIN = 256 << 20


class MissingDependencyError(ConversionError):
    """An optional dependency needed by this command is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the package '{package}', which is not installed; "
            f"install it with: pip install \"onnx-rmpe[{extra}]\""
        )


@dataclass(frozen=True)
class OffendingNode:
    """One node that blocks conversion, with the reason and (where one exists) the fix."""

    name: str
    op_type: str
    domain: str
    reason: str
    fix: str = ""

    def describe(self) -> str:
        plain = self.domain in ("", "ai.onnx")
        op = self.op_type if plain else f"{self.domain}::{self.op_type}"
        text = f"node '{self.name}' ({op}): {self.reason}"
        return f"{text}; fix: {self.fix}" if self.fix else text


class UnsupportedOpError(ConversionError):
    """The graph holds nodes the converter cannot turn into a spiking network."""

    def __init__(self, nodes: Sequence[OffendingNode], supported: Iterable[str]) -> None:
        self.nodes = list(nodes)
        self.supported = sorted(supported)
        lines = [f"{len(self.nodes)} node(s) cannot be converted to a spiking network:"]
        lines += [f"  - {n.describe()}" for n in self.nodes]
        lines.append("supported ops: " + ", ".join(self.supported))
        super().__init__("\n".join(lines))


class InternalError(Exception):
    """A bug in onnx-rmpe, not a user error: NOT a :class:`ConversionError`, so the CLI
    shows its traceback (the original exception is chained as ``__cause__``)."""


class InvariantError(InternalError):
    """A pass's precondition (``requires``) or invariant (``ensures``) does not hold."""


class PassError(InternalError):
    """A pass failed on a graph it accepted; names the pass and the ones that ran before."""

    def __init__(self, pass_name: str, before: Sequence[str], cause: Exception) -> None:
        ran = ", ".join(before) if before else "none"
        super().__init__(f"pass '{pass_name}' failed (passes run before it: {ran}): {cause}")
        self.pass_name = pass_name


class ReportError(ConversionError):
    """The report cannot count the cost of a node (an op between layers it cannot follow)."""

    def __init__(self, node: str, op: str, reason: str, fix: str) -> None:
        super().__init__(f"report: node '{node}' ({op}): {reason}; {fix}")
        self.node = node

