"""VM snapshots, both modes behind one front: ``vvhost vm snapshot|snapshots|revert|
snapshot-delete``::

    take     lease + recovery (the kernel) -> the mode (fixed by the first snapshot:
             COW where every disk's array snapshots instantly, else redo) ->
             CowSnapshots.take | RedoSnapshots.take
    revert   lease -> power a running VM off (--force) -> the point's mode reverts ->
             resume from the point's memory state, or start (--start)
    delete   lease -> the point's mode deletes it
    list     a read: recovers a pending record only when nobody holds the VM

COW mode is :mod:`vvhost.host.snapshots`, redo mode :mod:`vvhost.host.redo`; they
do not know each other.
"""

from __future__ import annotations

from typing import Any

import libvirt

from ..errors import AlreadyExists, InUse, InvalidInput
from ..units import check_name
from . import memstate
from .redo import RedoSnapshots
from .snapshots import CowSnapshots
from .vmdoc import Point, VmDoc, tree_lines
from .vmop import VmOps
from .vms import VmManager


class VmSnapshots:
    def __init__(self, vms: VmManager) -> None:
        self.vms = vms
        self.client = vms.client
        self.ops = VmOps(vms)

    # -- reading ----------------------------------------------------------------------------
    def listing(self, name: str) -> dict[str, Any]:
        _dom, doc = self.ops.inspect(name)
        return {
            "vm": name,
            "mode": doc.mode,
            "current": doc.current,
            "points": [_public(p) for p in sorted(doc.points, key=lambda p: p.created)],
        }

    def tree(self, name: str) -> list[str]:
        _dom, doc = self.ops.inspect(name)
        return tree_lines(doc)

    def mode_of(self, doc: VmDoc, wanted: str | None) -> str:
        """A VM's mode is fixed by its first snapshot: COW where every disk's array
        snapshots instantly, redo otherwise (or what ``wanted`` says)."""
        if doc.mode:
            if wanted and wanted != doc.mode:
                raise InvalidInput(detail=f"VM {doc.name} already takes {doc.mode}-mode snapshots")
            return doc.mode
        if wanted:
            return wanted
        arrays = {self.client.vvol(v)["array"] for v in doc.disks.values()}
        instant = all(self.client.array(a)["capabilities"].get("instant") for a in arrays)
        return "cow" if instant else "redo"

    # -- snapshot ---------------------------------------------------------------------------
    def take(
        self,
        name: str,
        snap: str,
        description: str = "",
        quiesce: bool = False,
        mode: str | None = None,
        memory: bool = False,
    ) -> dict[str, Any]:
        check_name(snap, what="snapshot name")
        with self.ops.operation(name, "vm-snapshot") as (dom, doc):
            if doc.has(snap):
                raise AlreadyExists(kind="snapshot", ref=f"{name}/{snap}")
            mode = self.mode_of(doc, mode)
            if memory and (mode != "cow" or not dom.isActive() or quiesce):
                raise InvalidInput(
                    detail="--memory needs a running VM in COW mode (and no --quiesce: "
                    "the guest is paused while its memory is saved)"
                )
            if mode == "redo":
                point = RedoSnapshots(self.ops).take(dom, doc, snap, description, quiesce)
            else:
                point = CowSnapshots(self.ops).take(dom, doc, snap, description, quiesce, memory)
            return _public(point)

    # -- revert -----------------------------------------------------------------------------
    def revert(
        self, name: str, snap: str, start: bool = False, force: bool = False
    ) -> dict[str, Any]:
        with self.ops.operation(name, "vm-revert") as (dom, doc):
            return self._revert(dom, doc, snap, start, force)

    def _revert(
        self, dom: libvirt.virDomain, doc: VmDoc, snap: str, start: bool, force: bool
    ) -> dict[str, Any]:
        name = dom.name()
        point = doc.point(snap)
        if dom.isActive():
            if not force:
                raise InUse(
                    kind="VM", ref=name, reason="it is running; stop it or revert with --force"
                )
            self.vms.stop(name, force=True)
        if point.mode == "redo":
            RedoSnapshots(self.ops).revert(dom, doc, point)
        else:
            before = self._where(doc)
            CowSnapshots(self.ops).revert(doc, point)
            # an array may keep a reverted disk elsewhere (rbd: a clone of the point
            # takes over); a host's view does not say where, so it re-points always
            if None in before.values() or self._where(doc) != before:
                self.vms.refresh(name)
        if point.memory:  # carry on where the guest was
            with memstate.scratch_file("memory.save") as mpath:
                memstate.load(self.vms, point.memory, point.memory_bytes, mpath, doc.pe)
                memstate.restore(self.vms, mpath, name)
            start = True
        elif start:
            self.vms.start(name)
        return {"vm": name, "reverted_to": snap, "current": snap, "started": start}

    def _where(self, doc: VmDoc) -> dict[str, Any]:
        """Where the array keeps each disk's data now (None where this caller is
        not shown it: hosts are not)."""
        return {t: self.client.vvol(v).get("where") for t, v in doc.disks.items()}

    # -- delete -----------------------------------------------------------------------------
    def delete(self, name: str, snap: str) -> dict[str, Any]:
        with self.ops.operation(name, "vm-snapshot-delete") as (dom, doc):
            point = doc.point(snap)
            if point.mode == "redo":
                RedoSnapshots(self.ops).delete(dom, doc, point)
            else:
                CowSnapshots(self.ops).delete(dom, doc, point)
            return {"vm": name, "deleted": snap}


def _public(p: Point) -> dict[str, Any]:
    return {
        "name": p.name,
        "parent": p.parent,
        "mode": p.mode,
        "description": p.description,
        "created": p.created,
        "running": p.running,
        "memory": p.memory,
        "stun_ms": p.stun_ms,
        "disks": p.disks or {t: chain[-1] for t, chain in p.layers.items()},
    }
