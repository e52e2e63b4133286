"""The interface every array backend implements.

A backend stores one volume per vvol id and knows how to make point-in-time
copies of them.  It keeps no catalog state: the control plane decides what
exists; the backend only does what it is told, idempotently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

Progress = Callable[[int, int], None]


class ArrayBackend(Protocol):
    name: str

    def offline(self) -> str | None:
        """Why the array cannot be used now (unmounted, another array's directory);
        None when it can."""

    def check(self) -> None:
        """Raise ``ArrayOffline`` unless the array can be used now."""

    def probe(self) -> dict[str, bool]:
        """Detect capabilities (``reflink``: native COW snapshots and clones)."""

    def locate(self, vvol_id: str) -> str:
        """The volume's path (or URI) on this array."""

    def exists(self, vvol_id: str) -> bool: ...

    def create(self, vvol_id: str, size: int) -> None: ...

    def remove(self, vvol_id: str) -> None:
        """Delete the volume and any half-written copy of it; missing is fine."""

    def resize(self, vvol_id: str, size: int) -> None: ...

    def copy_in(self, source: str, vvol_id: str, progress: Progress | None = None) -> str:
        """Make ``vvol_id`` an exact copy of ``source`` (a path, possibly on another
        array), atomically replacing it if it exists.  Returns ``reflink`` or ``copy``."""

    def stage(
        self, source: str, vvol_id: str, progress: Progress | None = None, sync: bool = True
    ) -> str:
        """Prepare a copy of ``source`` that ``commit_stage`` swaps in atomically
        (and makes durable, when ``sync`` was False)."""

    def commit_stage(self, vvol_id: str) -> None: ...

    def restage(self, source: str, vvol_id: str) -> int:
        """Update a staged reflink copy to ``source``'s content (only what differs)."""

    def staged(self, vvol_id: str) -> bool: ...

    def discard_stage(self, vvol_id: str) -> None: ...

    def keep(self, vvol_id: str, as_id: str) -> None:
        """Let ``as_id`` hold the volume's current data after the next ``commit_stage``."""

    def restore(self, vvol_id: str, from_id: str) -> None:
        """Make the volume hold ``from_id``'s data again (undo of a revert)."""

    def write_ranges(
        self,
        source: str,
        vvol_id: str,
        ranges: Sequence[tuple[int, int]],
        progress: Progress | None = None,
    ) -> int: ...

    def set_readonly(self, vvol_id: str, readonly: bool) -> None: ...

    def used(self, vvol_id: str) -> int:
        """Bytes actually allocated."""

    def list_ids(self) -> list[str]:
        """Every volume id present."""

    def partials(self) -> list[str]:
        """Ids with a half-written copy lying around."""

    def free_bytes(self) -> int: ...
