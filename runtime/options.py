"""Where and how models run: one value instead of four parameters threaded through calls.

:class:`RuntimeOptions` holds the onnxruntime placement (``device`` or explicit
``providers``, which win), intra-op ``threads``, the ``batch_size`` (at most; the memory
budget may shrink it) and the memory budget ``max_memory`` (bytes; None: half the
available memory). The CLI's shared ``runtime_options`` decorator builds it once; the jobs
(``convert``, ``calibrate``, ``evaluate``) accept it as ``runtime=`` and keep their
separate keyword arguments for API users. :func:`placement` is the one place where
providers win over a device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from onnx_rmpe.runtime.session import Device


def placement(device: Device = "cpu", providers: Sequence[str] | None = None) -> Device:
    """What sessions are made for: the ``providers`` list when given, else ``device``."""
    return list(providers) if providers else device


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "cpu"
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    #: None: the job's own default.
    batch_size: int | None = None
    max_memory: int | None = None

    @property
    def where(self) -> Device:
        return placement(self.device, self.providers)

    @staticmethod
    def resolve(runtime: RuntimeOptions | None, *, batch_size: int, threads: int | None,
                device: Device, providers: Sequence[str] | None,
                max_memory: int | None) -> tuple[int, int | None, Device, int | None]:
        """``(batch_size, threads, device, max_memory)`` of a job: ``runtime`` when given
        (its unset batch size keeps the job's), else the job's keyword arguments."""
        if runtime is None:
            return batch_size, threads, placement(device, providers), max_memory
        return (batch_size if runtime.batch_size is None else runtime.batch_size,
                runtime.threads, runtime.where, runtime.max_memory)


__all__ = ["RuntimeOptions", "placement"]
