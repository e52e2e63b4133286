"""Array backends: where vvol data lives."""

from __future__ import annotations

from ..errors import InvalidInput
from ..model import Array
from .base import ArrayBackend
from .dirarray import DirArray

BACKENDS = ("dir",)


def open_backend(array: Array) -> ArrayBackend:
    if array.backend == "dir":
        return DirArray(array.name, array.path, array.id, array.fs_id)
    raise InvalidInput(
        detail=f"unknown array backend {array.backend!r} (known: {', '.join(BACKENDS)})"
    )


__all__ = ["ArrayBackend", "BACKENDS", "DirArray", "open_backend"]
