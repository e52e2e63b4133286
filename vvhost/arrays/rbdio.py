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

from collections.abc import Iterator
from typing import Any

from . import rbdranges

BLOCK = 4 << 20  # bytes per read/write when copying
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
