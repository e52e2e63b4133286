"""Block I/O on RBD images, and the extent queries built on ``diff_iterate``.

    RbdVolume(image)      a VolumeIO over an open rbd.Image (head or snapshot)
    extents(image, ...)   ranges allocated (from_snap None) or changed since from_snap,
                          answered from the object map (fast-diff), never by reading data
    copy_ranges(src, dst) write what ``src`` holds in ``ranges`` into an image, zeroes as
                          write_zeroes (they deallocate whole objects)
    differing(a, b)       ranges where two VolumeIOs differ (the source side of copy_in)

``discard`` is not used for zeroing: librbd skips discards that do not cover
whole objects, so the old data would stay readable.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import rbd

from . import rbdranges
from .base import Progress, VolumeIO

BLOCK = 4 << 20  # bytes per read/write when copying
DEPTH = 8  # writes in flight per copy
ZERO = bytes(BLOCK)


def extents(
    image: Any,
    from_snap: str | None = None,
    include_parent: bool = True,
    whole_object: bool = False,
) -> rbdranges.Ranges:
    """Ranges of ``image`` (at the snapshot it was opened at) that hold data, or that
    changed since ``from_snap`` (data written or discarded)."""
    found: list[tuple[int, int]] = []

    def note(offset: int, length: int, exists: bool) -> int:
        if exists or from_snap is not None:
            found.append((offset, length))
        return 0

    image.diff_iterate(0, image.size(), from_snap, note, include_parent, whole_object)
    return rbdranges.merge(found)


class RbdVolume:
    """VolumeIO over an rbd.Image the caller opened (and closes)."""

    def __init__(self, image: Any) -> None:
        self.image = image
        self.size = int(image.size())

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.image.read(offset, length))

    def write(self, offset: int, data: bytes) -> None:
        self.image.write(data, offset)

    def zero(self, offset: int, length: int) -> None:
        self.image.write_zeroes(offset, length)

    def extents(self) -> Iterator[tuple[int, int]]:
        yield from extents(self.image)

    def flush(self) -> None:
        self.image.flush()


class Pipeline:
    """Writes to an image with up to ``depth`` requests in flight (librbd aio), so a copy
    is not one round trip per block.  ``drain`` waits for all and raises the first error.

        caller ── write/zero ──▶ [slot] ── aio ──▶ OSDs ── completion ──▶ slot freed
    """

    def __init__(self, image: Any, depth: int = DEPTH) -> None:
        self.image = image
        self.depth = depth
        self._slots = threading.Semaphore(depth)
        self._errors: list[int] = []

    def _done(self, completion: Any) -> None:
        ret = int(completion.get_return_value())
        if ret < 0:
            self._errors.append(ret)
        self._slots.release()

    def write(self, offset: int, data: bytes) -> None:
        self._slots.acquire()
        self.image.aio_write(data, offset, self._done)

    def zero(self, offset: int, length: int) -> None:
        self._slots.acquire()
        self.image.aio_write_zeroes(offset, length, self._done)

    def drain(self) -> None:
        for _ in range(self.depth):
            self._slots.acquire()
        for _ in range(self.depth):
            self._slots.release()
        if self._errors:
            err = -self._errors[0]
            raise rbd.IOError(f"write failed: {os.strerror(err)}", errno=err)


def copy_ranges(
    src: VolumeIO,
    dst: VolumeIO,
    ranges: Sequence[tuple[int, int]],
    progress: Progress | None = None,
) -> int:
    """Copy ``ranges`` of ``src`` to ``dst`` (all-zero blocks become zeroing); bytes done."""
    todo = [r for r in rbdranges.merge(ranges) if r[0] < src.size]
    todo = [(off, min(length, src.size - off)) for off, length in todo]
    total = rbdranges.total(todo)
    done = 0
    out: VolumeIO | Pipeline = Pipeline(dst.image) if isinstance(dst, RbdVolume) else dst
    try:
        for offset, length in rbdranges.blocks(todo, BLOCK):
            data = src.read(offset, length)
            if data == ZERO[: len(data)]:
                out.zero(offset, length)
            else:
                out.write(offset, data)
            done += length
            if progress is not None:
                progress(done, total)
    finally:
        if isinstance(out, Pipeline):
            out.drain()
    dst.flush()
    return done


def differing(old: VolumeIO, new: VolumeIO) -> rbdranges.Ranges:
    """Ranges where ``new`` differs from ``old`` (where either holds data; past the end of
    ``old`` wherever ``new`` holds data)."""
    candidates = rbdranges.merge([*old.extents(), *new.extents()])
    out: list[tuple[int, int]] = []
    for offset, length in rbdranges.blocks(candidates, BLOCK):
        if offset >= new.size:
            break
        length = min(length, new.size - offset)
        after = new.read(offset, length)
        before = b"" if offset >= old.size else old.read(offset, min(length, old.size - offset))
        if before.ljust(length, b"\0") != after:
            out.append((offset, length))
    return rbdranges.merge(out)
