"""Pending records: what a VM operation is about to do, saved in the config
document (``pending``) before it does it, so recovery finds it after a crash.

Each record is a typed dataclass; ``op`` names it in the document and picks its
recovery function in the kernel's table (:data:`vvhost.host.vmop.RECOVERY`)::

    op              record          fields
    snapshot        SnapshotRec     point, vvols (crash points: prepared, cut)
    revert          RevertRec       point, safety {target: name} (safety, one-reverted)
    drop            DropRec         vvols
    redo-snapshot   RedoLayersRec   point, vvols {target: name}, description, running
    redo-revert     RedoLayersRec   point, vvols {target: name}
    redo-delete     RedoDeleteRec   point, merges {target: [child, base]}, before
    redo-drop       DropRec         vvols
    move-storage    MoveRec         stage: copy -> release; container, new, snaps,
                                    temps, old, follow

In the document a record is a JSON object with ``op`` and its fields, as it
always was; :func:`parse` reads one back (unknown fields are ignored).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Rec")


@dataclass
class Rec:
    OPS: ClassVar[tuple[str, ...]] = ()
    op: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class SnapshotRec(Rec):
    OPS = ("snapshot",)
    point: str = ""
    vvols: list[str] = field(default_factory=list)


@dataclass
class RevertRec(Rec):
    OPS = ("revert",)
    point: str = ""
    safety: dict[str, str] = field(default_factory=dict)


@dataclass
class DropRec(Rec):
    OPS = ("drop", "redo-drop")
    vvols: list[str] = field(default_factory=list)


@dataclass
class RedoLayersRec(Rec):
    OPS = ("redo-snapshot", "redo-revert")
    point: str = ""
    vvols: dict[str, str] = field(default_factory=dict)
    description: str = ""
    running: bool = False


@dataclass
class RedoDeleteRec(Rec):
    OPS = ("redo-delete",)
    point: str = ""
    merges: dict[str, list[str]] = field(default_factory=dict)
    before: list[str] = field(default_factory=list)


@dataclass
class MoveRec(Rec):
    OPS = ("move-storage",)
    COPY: ClassVar[str] = "copy"
    RELEASE: ClassVar[str] = "release"
    stage: str = "copy"
    container: str = ""
    new: dict[str, str] = field(default_factory=dict)
    snaps: dict[str, dict[str, str]] = field(default_factory=dict)
    temps: list[str] = field(default_factory=list)
    old: list[str] = field(default_factory=list)
    follow: list[str] = field(default_factory=list)


RECORDS: dict[str, type[Rec]] = {
    op: cls
    for cls in (SnapshotRec, RevertRec, DropRec, RedoLayersRec, RedoDeleteRec, MoveRec)
    for op in cls.OPS
}


def parse(d: dict[str, Any] | None) -> Rec | None:
    """The typed record a document's ``pending`` holds (None: nothing pending)."""
    if not d:
        return None
    cls = RECORDS.get(str(d.get("op")), Rec)
    return cls.from_dict(d)
