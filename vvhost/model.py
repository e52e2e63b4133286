"""The control plane's data model.

    array  1──n  container_arrays  n──1  container  1──n  vvol
                                                           │ parent (snapshot | clone)
                                                           └── vvol ...

A vvol's ``refs`` counts the vvols whose ``parent`` is it (its snapshots and
linked clones); a vvol with ``refs > 0`` cannot be deleted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .arrays.settings import ArraySettings, DirSettings

VVOL_TYPES = ("data", "config", "swap", "memory", "other")
PROTOCOLS = ("iscsi", "nbd", "file")

# vvol states: only READY vvols take part in new operations.
READY = "ready"
CREATING = "creating"
DELETING = "deleting"
REVERTING = "reverting"
EXTENDING = "extending"
MOVING = "moving"
WRITING = "writing"
DEFERRED = "deferred"  # deleted, kept until its last snapshot or linked clone goes
FAILED = "failed"  # an operation could neither finish nor roll back; ``failure`` says why

SNAPSHOT = "snapshot"
CLONE = "clone"


@dataclass(frozen=True)
class Array:
    id: str
    name: str
    backend: str
    settings: ArraySettings
    capabilities: dict[str, bool]
    created: float
    fs_id: str | None = None  # the filesystem the array was added on (see arrays/identity.py)
    state: str = "online"  # online | offline | degraded: looked at, never stored
    reason: str | None = None

    @property
    def path(self) -> str | None:
        """The directory of a ``dir`` array; None for arrays that are not directories."""
        return self.settings.path if isinstance(self.settings, DirSettings) else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["settings"] = self.settings.to_dict()
        out["where"] = self.settings.where()
        if self.path is not None:
            out["path"] = self.path
        return out


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    capacity: int
    provisioned: int
    tenant: str | None
    arrays: list[str]
    created: float
    overcommit: float = 1.0  # provisioning may run this far ahead of the capacity
    reserve: int = 0  # physical bytes snapshots and clones may not take
    reserve_spec: str | None = None  # the reserve as given ("5%" follows the capacity)
    alerts: tuple[float, ...] = (0.8, 0.9)  # usage fractions whose crossing is an event

    @property
    def limit(self) -> int:
        """What writable vvols may provision in all: capacity x over-subscription."""
        return int(self.capacity * self.overcommit)

    @property
    def free(self) -> int:
        return self.limit - self.provisioned

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["free"] = self.free
        out["limit"] = self.limit
        return out


@dataclass(frozen=True)
class Vvol:
    id: str
    name: str | None
    type: str
    container: str
    array: str
    size: int
    parent: str | None
    relation: str | None
    readonly: bool
    state: str
    op: str | None
    generation: int
    refs: int
    created: float
    metadata: dict[str, str] = field(default_factory=dict)
    datastore: str | None = None
    tenant: str | None = None
    failure: str | None = None  # why the vvol is FAILED
    locator: dict[str, Any] | None = None  # where its array keeps it (RBD: image and snap ids)
    allocated: int = 0  # space figures cached from the array (see spacemodel.py)
    unique: int | None = None
    charge: int = 0  # what it counts in its container's ``provisioned``
    held: int = 0  # what it counts against the container's physical capacity

    @property
    def is_snapshot(self) -> bool:
        return self.relation == SNAPSHOT


@dataclass(frozen=True)
class JournalEntry:
    id: str
    op: str
    vvol: str | None
    step: str
    args: dict[str, Any]
    created: float


@dataclass(frozen=True)
class Host:
    name: str
    iqn: str | None
    created: float
    tenant: str | None = None
    fenced: float | None = None  # when it was fenced (None: it is not)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Pe:
    """A protocol endpoint.  ``config`` holds protocol details (iSCSI control port,
    IQN prefix; NBD socket)."""

    id: str
    name: str
    protocol: str
    array: str | None
    portal: str | None
    path: str | None
    config: dict[str, Any]
    created: float
    node: str | None = None  # the node whose control-plane replica runs it (None: any)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# binding states
ATTACHING = "attaching"
ACTIVE = "active"
DETACHING = "detaching"
FENCED = "fenced"  # its host was fenced: nothing presents it; unfence drops it


@dataclass(frozen=True)
class Binding:
    """(vvol, host) -> (PE, secondary id).  For iSCSI the secondary id is the LUN
    number on target ``tid``; for NBD the export name; for file the file name."""

    vvol: str
    host: str
    pe: str
    secondary_id: str
    tid: int | None
    readonly: bool
    shared: bool
    refcount: int
    state: str
    op: str | None
    created: float


@dataclass(frozen=True)
class Datastore:
    """What hypervisors see: an id in the form of an array LUN id (NAA type 6) mapped
    onto one or more containers, possibly on several arrays."""

    id: str
    name: str
    capacity: int
    tenant: str | None
    containers: list[str]
    created: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ADMIN = "admin"
HOST = "host"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the unix socket and admin tokens are ``admin``; a host token is
    that ``host`` of its tenant."""

    kind: str
    name: str
    tenant: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == ADMIN
