"""The document in a VM's config vvol: its definition, its disks and its snapshot tree.

    {"name", "xml", "disks": {target: vvol}, "datastore", "pe", "host",
     "mode": "cow" | "redo" | null,          fixed by the first snapshot
     "layers": {target: [vvol, ...]},        redo mode: the live disk's backing layers,
                                             bottom first (the top is disks[target])
     "points": [Point, ...],                 the snapshot tree (parent links)
     "current": point name | null,           the point the live state grew from
     "pending": {...} | null}                an unfinished VM operation (see recovery)

The document travels with the storage, so a VM's snapshots come along when it is
registered on another host.  It is saved compare-and-set: ``load`` keeps the
config vvol's generation and ``save`` writes only if nobody saved since (else
``StaleGeneration``), so one command never silently undoes another's change.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..client import Client
from ..errors import NotFound, StaleGeneration


class DocChanged(StaleGeneration):
    """Somebody saved the VM's document after this command read it (a lost update
    was refused)."""

    template = (
        "the config document of VM {vm} changed since this command read it "
        "(generation {expected}, now {actual}); nothing was overwritten"
    )


@dataclass
class Point:
    """One VM snapshot.  COW mode: ``disks`` are the array snapshot vvols.  Redo mode:
    ``layers`` are, per disk, the frozen chain (bottom first) that makes up the point."""

    name: str
    parent: str | None
    mode: str
    disks: dict[str, str] = field(default_factory=dict)
    layers: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    created: float = 0.0
    xml: str = ""
    running: bool = False
    memory: str | None = None  # the memory vvol (--memory): revert resumes from it
    memory_bytes: int = 0
    stun_ms: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class VmDoc:
    config: str
    name: str
    xml: str
    disks: dict[str, str]
    datastore: str | None = None
    pe: str | None = None
    host: str | None = None
    mode: str | None = None
    layers: dict[str, list[str]] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    current: str | None = None
    pending: dict[str, Any] | None = None
    generation: int | None = None  # the config vvol's, as read (not part of the document)

    @classmethod
    def load(cls, client: Client, config: str) -> VmDoc:
        read = client.config_read(config)
        d = read["document"]
        return cls(
            config=config,
            name=str(d.get("name", "")),
            xml=str(d.get("xml", "")),
            disks=dict(d.get("disks") or {}),
            datastore=d.get("datastore"),
            pe=d.get("pe"),
            host=d.get("host"),
            mode=d.get("mode"),
            layers={t: list(v) for t, v in (d.get("layers") or {}).items()},
            points=[Point.from_dict(p) for p in d.get("points") or []],
            current=d.get("current"),
            pending=d.get("pending"),
            generation=read.get("generation"),
        )

    def save(self, client: Client) -> None:
        doc = asdict(self)
        doc.pop("config")
        doc.pop("generation")
        try:
            done = client.config_put(self.config, doc, self.generation)
        except StaleGeneration as exc:
            raise DocChanged(
                vm=self.name, expected=self.generation, actual=exc.fields.get("actual")
            ) from None
        self.generation = done.get("generation")

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise NotFound(kind="snapshot", ref=f"{self.name}/{name}")

    def has(self, name: str) -> bool:
        return any(p.name == name for p in self.points)

    def children(self, name: str | None) -> list[Point]:
        return [p for p in self.points if p.parent == name]

    def add(self, point: Point) -> None:
        point.created = point.created or time.time()
        self.points.append(point)

    def remove(self, name: str) -> None:
        """Drop a point; its children hang from its parent from now on."""
        gone = self.point(name)
        for p in self.points:
            if p.parent == name:
                p.parent = gone.parent
        if self.current == name:
            self.current = gone.parent
        self.points = [p for p in self.points if p.name != name]

    def all_vvols(self) -> set[str]:
        """Every vvol the VM owns: live disks, their layers, and its points'."""
        out = set(self.disks.values()) | {self.config}
        for chain in self.layers.values():
            out.update(chain)
        for p in self.points:
            out.update(p.disks.values())
            for chain in p.layers.values():
                out.update(chain)
            if p.memory:
                out.add(p.memory)
        return out


def tree_lines(doc: VmDoc) -> list[str]:
    """The snapshot tree as text a person reads: branches drawn, and the live state
    (``now``) shown under the point it grew from."""
    lines = [doc.name]

    def when(p: Point) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.created))

    def label(p: Point) -> str:
        extra = [p.mode] + (["memory"] if p.memory else [])
        if p.description:
            extra.append(repr(p.description))
        return f"{p.name}  {when(p)}  " + "  ".join(extra)

    def walk(parent: str | None, prefix: str) -> None:
        kids: list[Point | None] = [*sorted(doc.children(parent), key=lambda p: p.created)]
        if parent == doc.current:
            kids.append(None)  # the live state
        for i, p in enumerate(kids):
            last = i == len(kids) - 1
            branch = "└── " if last else "├── "
            lines.append(prefix + branch + ("now" if p is None else label(p)))
            if p is not None:
                walk(p.name, prefix + ("    " if last else "│   "))

    walk(None, "")
    return lines
