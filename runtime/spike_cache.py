"""Spike trains kept on disk during calibration: one bit per spike, with the disk use counted.

A layer's spikes ``[T, N, ...]`` (bool) are stored as ``[T, N, ceil(prod(...) / 8)]``
bytes (``numpy.packbits`` over each sample's neurons) in a memory-mapped file, eight times
less disk and page cache than one byte per spike. :class:`SpikeStore` creates the caches
in one directory, deletes a cache's file as soon as it is freed, and records the bytes on
disk at the peak, which calibration reports.
"""

from __future__ import annotations

import os

import numpy as np


class PackedSpikes:
    """A ``[T, N, ...]`` boolean array stored as bits; index it as ``cache[:, samples]``."""

    def __init__(self, path: str, shape: tuple[int, ...]) -> None:
        self.path, self.shape = path, tuple(shape)
        self.size = int(np.prod(shape[2:], dtype=np.int64))
        packed = (shape[0], shape[1], (self.size + 7) // 8)
        self.bits = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=packed)
        self.nbytes = int(self.bits.nbytes)

    def _samples(self, key) -> slice:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)):
            raise IndexError("index a spike cache as cache[:, samples]")
        return key[1]

    def __getitem__(self, key) -> np.ndarray:
        bits = np.asarray(self.bits[:, self._samples(key)])
        flat = np.unpackbits(bits, axis=-1, count=self.size).astype(bool)
        return flat.reshape(bits.shape[:2] + self.shape[2:])

    def __setitem__(self, key, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=bool)
        flat = value.reshape(value.shape[:2] + (self.size,))
        self.bits[:, self._samples(key)] = np.packbits(flat, axis=-1)

    def close(self) -> None:
        """Drop the mapping and delete the file."""
        self.bits = None
        if os.path.exists(self.path):
            os.unlink(self.path)


class SpikeStore:
    """Creates :class:`PackedSpikes` in ``directory``; ``peak_bytes``: most bytes on disk."""

    def __init__(self, directory: str) -> None:
        self.directory, self.live, self.peak_bytes, self._count = directory, 0, 0, 0

    def new(self, shape: tuple[int, ...]) -> PackedSpikes:
        self._count += 1
        cache = PackedSpikes(os.path.join(self.directory, f"spikes{self._count}.npy"), shape)
        self.live += cache.nbytes
        self.peak_bytes = max(self.peak_bytes, self.live)
        return cache

    def free(self, cache: PackedSpikes | None) -> None:
        if cache is not None and cache.bits is not None:
            self.live -= cache.nbytes
            cache.close()
