"""Block I/O on volumes: a file implementation, and copies between any two.

Copies between arrays of different kinds (a ``dir`` file into an RBD image and
back) go through ``VolumeIO``: only allocated ranges are read, holes stay
holes (or are zeroed) on the destination.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from types import TracebackType

from .. import fsutil
from .base import Progress, Ranges, VolumeIO

BLOCK = 4 * 1024 * 1024
ZERO = bytes(BLOCK)


class FileIO:
    """``VolumeIO`` over a raw file; ``path`` lets a ``dir`` array use
    reflinks and ``copy_file_range`` when both sides are files."""

    def __init__(self, path: str, writable: bool = False) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n
        self.size = max(self.size, offset)

    def zero(self, offset: int, length: int) -> None:
        fsutil.zero_range(self.fd, offset, length)

    def extents(self) -> Iterator[tuple[int, int]]:
        return fsutil.data_runs(self.fd, 0, self.size)

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> FileIO:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _clip(ranges: Sequence[tuple[int, int]], start: int, end: int) -> Ranges:
    out = []
    for off, n in ranges:
        lo, hi = max(off, start), min(off + n, end)
        if hi > lo:
            out.append((lo, hi - lo))
    return out


def copy_ranges(
    src: VolumeIO,
    dst: VolumeIO,
    ranges: Sequence[tuple[int, int]],
    progress: Progress | None = None,
) -> int:
    """Copy ``ranges`` of ``src`` into ``dst`` in place: data is written, what
    is a hole in ``src`` (or past its end) reads as zeros in ``dst``.  Returns
    the data bytes copied."""
    wanted = sorted((o, n) for o, n in ranges if n > 0)
    data = list(src.extents())
    plan = [(o, o + n, _clip(data, o, min(o + n, src.size))) for o, n in wanted]
    total = sum(n for *_, runs in plan for _, n in runs)
    done = 0
    for start, end, runs in plan:
        pos = start
        for off, n in runs:
            if off > pos:
                dst.zero(pos, off - pos)
            for at in range(off, off + n, BLOCK):
                chunk = src.read(at, min(BLOCK, off + n - at))
                if chunk == ZERO[: len(chunk)]:  # allocated but zero: keep it thin
                    dst.zero(at, len(chunk))
                else:
                    dst.write(at, chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            pos = off + n
        limit = min(end, dst.size)
        if limit > pos:
            dst.zero(pos, limit - pos)
    dst.flush()
    return done


def copy_all(src: VolumeIO, dst: VolumeIO, progress: Progress | None = None) -> int:
    """Copy every allocated range of ``src`` into ``dst`` (which is fresh and
    sparse, or is made to read as ``src`` everywhere)."""
    return copy_ranges(src, dst, [(0, src.size)], progress)


def differing(a: VolumeIO, b: VolumeIO, chunk: int) -> Ranges:
    """Chunks whose bytes differ between ``a`` and ``b`` (read both, skipping
    what is a hole in both); past the shorter one, chunks where the longer has data."""
    size = max(a.size, b.size)
    candidates = _merged(list(a.extents()) + list(b.extents()))
    out: list[tuple[int, int]] = []
    for off, n in candidates:
        start = off - off % chunk
        end = min(size, -(-(off + n) // chunk) * chunk)
        for at in range(start, end, chunk):
            length = min(chunk, size - at)
            if a.read(at, length).ljust(length, b"\0") != b.read(at, length).ljust(length, b"\0"):
                if out and out[-1][0] + out[-1][1] == at:
                    out[-1] = (out[-1][0], out[-1][1] + length)
                elif not out or out[-1][0] + out[-1][1] < at:
                    out.append((at, length))
    return out


def _merged(ranges: list[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for off, n in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], off + n)
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((off, n))
    return out
