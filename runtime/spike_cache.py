"""Arrays kept on disk during calibration: spike trains in bits, input currents as float32.

A layer's spikes ``[T, N, ...]`` (bool) are stored as ``[T, N, ceil(prod(...) / 8)]``
bytes (``numpy.packbits`` over each sample's neurons), eight times less disk and page
cache than one byte per spike; a layer's input currents (:class:`DiskArray`) as float32
``[T, N, ...]``. Both are read and written with ``pread``/``pwrite`` at the offsets of a
batch of samples, never memory-mapped, so what they hold does not count in the process's
resident memory (only the batch being read or written does). :class:`SpikeStore` creates
them in one directory, deletes a file as soon as it is freed, and records the bytes on
disk at the peak, which calibration reports. Before it creates a file it checks that the
file fits the free disk space (less ``errors.DISK_MARGIN``) and otherwise stops with a
:class:`onnx_rmpe.errors.DiskSpaceError` that names the directory, instead of failing
with a full disk half-way through a layer.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from onnx_rmpe.errors import DISK_MARGIN, DiskSpaceError


class DiskArray:
    """A ``[T, N, ...]`` array in a file; index it as ``array[:, samples]`` (a slice)."""

    dtype = np.dtype(np.float32)

    def __init__(self, path: str, shape: tuple[int, ...]) -> None:
        self.path, self.shape = path, tuple(shape)
        self.row = self._row_bytes()  # bytes of one sample at one step
        self.nbytes = int(shape[0] * shape[1] * self.row)
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, self.nbytes)

    def _row_bytes(self) -> int:
        return self.row_bytes(self.shape)

    @classmethod
    def row_bytes(cls, shape: tuple[int, ...]) -> int:
        """Bytes of one sample at one step of a ``shape`` array of this kind."""
        return int(np.prod(shape[2:], dtype=np.int64)) * cls.dtype.itemsize

    def _samples(self, key) -> slice:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)
                and isinstance(key[1], slice)):
            raise IndexError("index a disk array as array[:, start:stop]")
        start, stop, step = key[1].indices(self.shape[1])
        if step != 1:
            raise IndexError("disk arrays are read in contiguous sample ranges")
        return slice(start, stop)

    def read_raw(self, sl: slice) -> np.ndarray:
        """The stored rows ``[T, samples, row bytes]`` of the samples ``sl``."""
        sl = self._samples((slice(None), sl))
        n = sl.stop - sl.start
        out = np.empty((self.shape[0], n, self.row), np.uint8)
        for t in range(self.shape[0]):
            offset = (t * self.shape[1] + sl.start) * self.row
            _pread_into(self.fd, out[t].reshape(-1), offset)
        return out

    def write_raw(self, sl: slice, raw: np.ndarray) -> None:
        sl = self._samples((slice(None), sl))
        raw = np.ascontiguousarray(raw, np.uint8).reshape(self.shape[0], -1)
        for t in range(self.shape[0]):
            offset = (t * self.shape[1] + sl.start) * self.row
            _pwrite_all(self.fd, raw[t], offset)

    def __getitem__(self, key) -> np.ndarray:
        raw = self.read_raw(self._samples(key))
        return raw.view(self.dtype).reshape(raw.shape[:2] + self.shape[2:])

    def __setitem__(self, key, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value, self.dtype)
        self.write_raw(self._samples(key), value.view(np.uint8))

    def close(self) -> None:
        """Close and delete the file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if os.path.exists(self.path):
            os.unlink(self.path)


class PackedSpikes(DiskArray):
    """A ``[T, N, ...]`` boolean array stored as bits; index it as ``cache[:, samples]``."""

    dtype = np.dtype(np.uint8)

    def _row_bytes(self) -> int:
        self.size = int(np.prod(self.shape[2:], dtype=np.int64))
        return self.row_bytes(self.shape)

    @classmethod
    def row_bytes(cls, shape: tuple[int, ...]) -> int:
        return (int(np.prod(shape[2:], dtype=np.int64)) + 7) // 8

    @property
    def bits(self):  # truthy while the file exists (former memory-map attribute)
        return self.fd

    def __getitem__(self, key) -> np.ndarray:
        bits = self.read_raw(self._samples(key))
        flat = np.unpackbits(bits, axis=-1, count=self.size).view(bool)
        return flat.reshape(bits.shape[:2] + self.shape[2:])

    def __setitem__(self, key, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=bool)
        flat = value.reshape(value.shape[:2] + (self.size,))
        self.write_raw(self._samples(key), np.packbits(flat, axis=-1))


def merge_packed(chosen: PackedSpikes, other: PackedSpikes, mask: np.ndarray,
                 batch: int) -> PackedSpikes:
    """``chosen`` becomes ``where(mask, chosen, other)`` (``mask``: per neuron, broadcast to
    the neurons of one sample), computed on the packed bits."""
    packed = np.packbits(np.broadcast_to(np.asarray(mask, bool),
                                         chosen.shape[2:]).reshape(-1))
    for start in range(0, chosen.shape[1], batch):
        sl = slice(start, min(chosen.shape[1], start + batch))
        a, b = chosen.read_raw(sl), other.read_raw(sl)
        chosen.write_raw(sl, (a & packed) | (b & ~packed))
    return chosen


def _pread_into(fd: int, out: np.ndarray, offset: int) -> None:
    view, done = memoryview(out).cast("B"), 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise OSError(f"short read from a calibration cache at offset {offset + done}")
        done += got


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view, done = memoryview(np.ascontiguousarray(data)).cast("B"), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class SpikeStore:
    """Creates :class:`PackedSpikes` (and :class:`DiskArray`) in ``directory``;
    ``peak_bytes``: most bytes on disk."""

    def __init__(self, directory: str, prefix: str = "spikes") -> None:
        self.directory, self.live, self.peak_bytes, self._count = directory, 0, 0, 0
        self.prefix = prefix

    def new(self, shape: tuple[int, ...], kind: type[DiskArray] = PackedSpikes) -> DiskArray:
        self._count += 1
        path = os.path.join(self.directory, f"{self.prefix}{self._count}.bin")
        needed = int(shape[0]) * int(shape[1]) * kind.row_bytes(tuple(shape))
        free = shutil.disk_usage(self.directory).free
        if needed > free - DISK_MARGIN:  # the files are sparse: their pages come with writes
            raise DiskSpaceError(self.directory, needed, free)
        cache = kind(path, shape)
        self.live += cache.nbytes
        self.peak_bytes = max(self.peak_bytes, self.live)
        return cache

    def free(self, cache: DiskArray | None) -> None:
        if cache is not None and cache.fd is not None:
            self.live -= cache.nbytes
            cache.close()
