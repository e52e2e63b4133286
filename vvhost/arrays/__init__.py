"""Array backends: where vvol data lives.

One table maps a backend's name to its settings record and how to open it;
adding a backend touches its own module and this table.  A backend that opens
clients of a storage system (rbd) reports them to the ``ClientWatch`` it is
opened with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput
from .base import ArrayBackend, ClientWatch
from .dirarray import DirArray
from .settings import ArraySettings, DirSettings, RbdSettings, parse

if TYPE_CHECKING:
    from ..model import Array


@dataclass(frozen=True)
class BackendKind:
    settings: type[DirSettings] | type[RbdSettings]
    opener: Callable[[Array, ClientWatch | None], ArrayBackend]


def _open_dir(array: Array, _clients: ClientWatch | None) -> ArrayBackend:
    assert isinstance(array.settings, DirSettings)
    return DirArray(array.name, array.settings.path, array.id, array.fs_id)


def _open_rbd(array: Array, clients: ClientWatch | None) -> ArrayBackend:
    from .rbdarray import RbdArray  # librados is loaded only where an RBD array is used

    assert isinstance(array.settings, RbdSettings)
    return RbdArray(array.name, array.settings, array.id, clients)


BACKENDS: dict[str, BackendKind] = {
    "dir": BackendKind(DirSettings, _open_dir),
    "rbd": BackendKind(RbdSettings, _open_rbd),
}


def kind(backend: str) -> BackendKind:
    entry = BACKENDS.get(backend)
    if entry is None:
        raise InvalidInput(
            detail=f"unknown backend {backend!r} for an array (known: {', '.join(BACKENDS)})"
        )
    return entry


def settings_from(backend: str, data: dict[str, Any]) -> ArraySettings:
    """The settings record of a ``backend`` array from its stored JSON."""
    return parse(kind(backend).settings, data)


def open_backend(array: Array, clients: ClientWatch | None = None) -> ArrayBackend:
    return kind(array.backend).opener(array, clients)


__all__ = [
    "ArrayBackend",
    "BACKENDS",
    "BackendKind",
    "ClientWatch",
    "DirArray",
    "kind",
    "open_backend",
    "settings_from",
]
