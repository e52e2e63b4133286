"""The interface every array backend implements: the verbs a storage array offers.

A backend stores one volume per vvol id (snapshots and clones are vvols too)
and knows how to make point-in-time copies of them.  The control plane decides
what exists and journals every multi-step operation; the backend only does
what it is told, idempotently, so recovery can call any verb again.

Ids are the catalog's vvol ids.  ``space`` is the storage container a volume
belongs to: arrays that can isolate containers from each other (RBD
namespaces) use it, the others ignore it.  A snapshot or clone lives in the
space its verb names; a snapshot always in its base's.

Nothing outside a backend opens vvol data by path: readers and writers go
through ``open`` (block I/O), daemons and hosts through ``source`` (a typed
``FileSource`` or ``RbdSource``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .sources import DataSource

Progress = Callable[[int, int], None]
Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class Space:
    """What a volume takes: its size, the bytes the array allocated for it, and
    (where the array can tell) the bytes no other volume shares."""

    provisioned: int
    allocated: int
    unique: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"provisioned": self.provisioned, "allocated": self.allocated, "unique": self.unique}


@dataclass(frozen=True)
class Opener:
    """A client that has a volume's data open now (RBD: a watcher of its image)."""

    client: str  # the storage system's name for the session (RBD: ``client.<global id>``)
    addr: str  # where that client is (RBD: ``IP:PORT/NONCE``)
    entity: str | None = None  # the identity it logged in as, when the system can tell

    def label(self) -> str:
        return f"{self.entity or self.client} at {self.addr}"


@dataclass(frozen=True)
class Changed:
    """Chunk-aligned ranges that differ (or, without a base, hold data), and how
    the array found them (``fiemap``, ``compare``, ``allocation``, ``fast-diff``)."""

    ranges: Ranges
    method: str


class VolumeIO(Protocol):
    """Block access to one volume (``ArrayBackend.open``)."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def zero(self, offset: int, length: int) -> None:
        """Make the range read as zeros, deallocating where the array can."""

    def extents(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of every allocated range, in order (holes read as zeros)."""

    def flush(self) -> None: ...


class ClientWatch(Protocol):
    """Who hears about the storage clients an array's backend opens (the control
    plane records them, so a replica taking over can cut a frozen one's off).
    Either call may raise (e.g. ``ReplicaFenced``): the backend then stops."""

    def connected(self, array_id: str, addr: str) -> None:
        """A client is up, before any I/O goes through it; raising refuses it."""

    def closed(self, array_id: str, addr: str) -> None:
        """The backend shut that client down itself."""

    def cut_off(self, array_id: str, addr: str) -> None:
        """The storage refused that client for good (RBD: it was blocklisted)."""


class ArrayBackend(Protocol):
    name: str
    kind: str  # the backend's key in the table (``dir``, ``rbd``)

    # -- state ------------------------------------------------------------------------
    def offline(self) -> str | None:
        """Why the array cannot be used now (unmounted, another array's directory,
        cluster unreachable); None when it can."""

    def check(self) -> None:
        """Raise ``ArrayOffline`` unless the array can be used now."""

    def probe(self) -> dict[str, bool]:
        """Detect capabilities: ``instant`` (snapshots and linked clones without
        copying data), ``reflink``, ``sparse``, ``namespaces``."""

    def free_bytes(self) -> int: ...

    def claim(self) -> None:
        """Mark the storage as this array's (``array add``); storage another array
        marked, or that holds data that is not ours, is refused."""

    def release(self) -> None:
        """Take the mark back (``array delete``); storage still holding data keeps it."""

    def locator(self, vvol_id: str) -> dict[str, Any]:
        """Where the array keeps the volume, for the catalog (RBD: image and snap ids)."""

    def close(self) -> None:
        """Let go of connections (the control plane stops or forgets the array)."""

    def fence_clients(self, addrs: Sequence[str]) -> None:
        """Make the storage refuse every request of these clients from now on (what
        ``ClientWatch.connected`` reported); arrays without clients have none."""

    # -- volumes ----------------------------------------------------------------------
    def exists(self, vvol_id: str) -> bool: ...

    def create(self, vvol_id: str, size: int, space: str) -> None: ...

    def remove(self, vvol_id: str) -> None:
        """Delete the volume (a snapshot: its point in time) and any half-made copy;
        missing is fine.  Data other volumes still need (an RBD image with clones)
        stays until nothing needs it."""

    def resize(self, vvol_id: str, size: int) -> None: ...

    def set_readonly(self, vvol_id: str, readonly: bool) -> None: ...

    def space(self, vvol_id: str) -> Space:
        """Provisioned, allocated and unique bytes (may walk the volume's history)."""

    def allocated(self, vvol_id: str) -> int:
        """Bytes the array allocated for the volume, cheaply (RBD: whole objects from
        the object map): what listings show as ``used``."""

    def exclusive(self, vvol_id: str, newer: Sequence[str]) -> int | None:
        """Bytes of the volume that none of ``newer`` (the later points of its family:
        later snapshots and the live volume) holds: what a snapshot is counted
        against physical capacity, so a family's bytes are counted once (by the
        newest holder).  None where the array cannot tell."""

    def list_ids(self) -> list[str]:
        """Every volume id present (snapshots included)."""

    def partials(self) -> list[str]:
        """Ids with a half-made copy lying around."""

    def source(self, vvol_id: str) -> DataSource:
        """Where a daemon finds the volume's data (a snapshot's read-only data)."""

    def openers(self, vvol_id: str) -> list[Opener]:
        """Clients other than this process that have the volume open now; ``remove``
        refuses a volume someone has open. Empty where the array cannot tell."""

    def open(self, vvol_id: str, writable: bool = False) -> AbstractContextManager[VolumeIO]: ...

    # -- points in time ---------------------------------------------------------------
    def snapshot(self, vvol_id: str, snap_id: str) -> str:
        """Make ``snap_id`` a read-only point-in-time copy of the volume now.
        Returns how (``reflink``, ``copy``, ``rbd-snap``).  Callers make sure
        nobody writes meanwhile when the array is not ``instant``."""

    def prepare_snapshot(self, vvol_id: str, snap_id: str) -> None:
        """First half of a group snapshot, while the guest still runs: whatever
        makes ``cut_snapshot`` short (``dir`` on reflink: clone now)."""

    def cut_snapshot(self, vvol_id: str, snap_id: str) -> None:
        """Capture the point in time (the guest is paused): short."""

    def cut_snapshots(self, cuts: list[tuple[str, str]]) -> None:
        """Cut the ``(vvol_id, snap_id)`` points of one group (the guest is paused),
        as close together as the array can; a failure leaves them to ``abort``."""

    def commit_snapshot(self, snap_id: str) -> None:
        """Make a cut snapshot durable and read-only."""

    def abort_snapshot(self, snap_id: str) -> None:
        """Drop a prepared or cut snapshot (idempotent)."""

    def clone(
        self,
        src_id: str,
        new_id: str,
        space: str,
        linked: bool,
        progress: Progress | None = None,
    ) -> str:
        """Make ``new_id`` a writable copy of ``src_id`` (a vvol or a snapshot).
        ``linked``: share the source's data where the array can (it then keeps
        the source's data while the clone lives).  Returns how it was done."""

    def revert(self, vvol_id: str, snap_id: str, op: str, progress: Progress | None = None) -> None:
        """Stage ``snap_id``'s data as the volume's next data (the volume is
        untouched until ``revert_commit``).  Named by ``op`` so a crash leaves
        nothing recovery cannot find."""

    def revert_commit(self, vvol_id: str, op: str, snap_id: str | None = None) -> None:
        """Atomically make the staged data the volume's; the old data stays while
        other snapshots or clones need it (idempotent).  ``snap_id``: the snapshot
        ``revert`` staged (recovery passes it from the journal: an array may have
        staged by reference to data it keeps for that snapshot, not by a copy)."""

    def revert_undo(self, vvol_id: str, op: str) -> None:
        """Before commit: drop what ``revert`` staged (idempotent)."""

    # -- data movement ----------------------------------------------------------------
    def changed(
        self, vvol_id: str, base_id: str | None, chunk: int, method: str | None = None
    ) -> Changed:
        """Chunks that differ between ``base_id`` and ``vvol_id`` (both volumes of
        this array), or that hold data when ``base_id`` is None."""

    def copy_in(
        self,
        vvol_id: str,
        space: str,
        chain: Sequence[tuple[str, VolumeIO]],
        progress: Progress | None = None,
    ) -> None:
        """Make ``vvol_id`` a copy of another array's data, keeping its points in
        time: ``chain`` is (id, data) oldest first; every id before the last
        becomes a snapshot of ``vvol_id`` (its own volume on ``dir``, an RBD
        snapshot of the one image on ``rbd``), the last one is ``vvol_id``
        itself.  Only what differs between consecutive points is written where
        the array shares data between them.  Replaces what a crashed earlier
        attempt left."""

    def write_ranges(
        self,
        src: VolumeIO,
        vvol_id: str,
        ranges: Sequence[tuple[int, int]],
        progress: Progress | None = None,
    ) -> int:
        """Copy ``ranges`` of ``src`` into the volume; returns the bytes written."""

    def relocate(
        self, vvol_ids: Sequence[str], space: str, progress: Progress | None = None
    ) -> None:
        """Put volumes (a vvol and its snapshots) into another space of this array
        (RBD: their images migrate to the container's namespace; idempotent)."""

    def reap(self) -> list[str]:
        """Purge data nothing needs any more (RBD: trash); returns what went."""

    def background(self, vvol_id: str) -> dict[str, Any] | None:
        """Work the array does on its own for the volume, with its progress (RBD:
        flattening a clone deeper than the limit); None when there is none."""

    def audit(self) -> list[str]:
        """What the array holds that no volume accounts for (beyond ``list_ids``
        and ``partials``): RBD snapshots no vvol is, trash not purged, ..."""
