"""Block I/O on RBD images, and the extent queries built on ``diff_iterate``.

    RbdVolume(image)      a VolumeIO over an open rbd.Image (head or snapshot)
    extents(image, ...)   ranges allocated (from_snap None) or changed since from_snap,
                          answered from the object map (fast-diff), never by reading data

Copies into images go through ``volio.copy_ranges`` (zero blocks become
``zero``: write_zeroes, which deallocates whole objects).

``discard`` is not used for zeroing: librbd skips discards that do not cover
whole objects, so the old data would stay readable.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import rbd

from . import rbdranges

BLOCK = 4 << 20  # bytes per read/write when copying
DEPTH = 8  # writes in flight per open image
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


class RbdVolume:
    """VolumeIO over an rbd.Image the caller opened (and closes).  Writes are queued
    (``Pipeline``); a read, ``extents`` or ``flush`` waits for them first."""

    def __init__(self, image: Any) -> None:
        self.image = image
        self.size = int(image.size())
        self._pipe = Pipeline(image)

    def read(self, offset: int, length: int) -> bytes:
        self._pipe.drain()
        return bytes(self.image.read(offset, length))

    def write(self, offset: int, data: bytes) -> None:
        self._pipe.write(offset, data)

    def zero(self, offset: int, length: int) -> None:
        self._pipe.zero(offset, length)

    def extents(self) -> Iterator[tuple[int, int]]:
        self._pipe.drain()
        yield from extents(self.image)

    def flush(self) -> None:
        self._pipe.drain()
        self.image.flush()

    def settle(self) -> None:
        """Wait for queued writes, ignoring their errors (an error is already on its way)."""
        with contextlib.suppress(rbd.Error):
            self._pipe.drain()
