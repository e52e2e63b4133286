"""VM snapshots: one consistency group over all of a VM's disks.

COW mode (the array snapshots instantly: ``dir`` on XFS/btrfs)::

    snapshot   pause (or freeze with --quiesce) -> array snapshot of every disk -> resume;
               the live disks stay the base vvols, the point names the snapshot vvols
    revert     safety snapshot of every disk -> revert every disk to the point ->
               drop the safety snapshots (on any failure: back to the safety, then drop)
    delete     drop the point's snapshot vvols (refused while a clone needs them)

Redo mode (no array COW: ext4) lives in :mod:`vvhost.host.redo`.

Every operation runs through the kernel (:mod:`vvhost.host.vmop`: the VM's
lease, then recovery) and first records what it is about to do in the config
vvol (``pending``), so a ``vvhost`` killed half-way is finished on the next
command that touches the VM: a half-taken snapshot is dropped, a half-done
revert goes back to the safety point.  Either way the disks hold one consistent
point.  The recovery functions at the end are named in the kernel's table.
"""

from __future__ import annotations

import uuid
from typing import Any

import libvirt

from ..errors import AlreadyExists, InUse, InvalidInput
from ..faults import host_fault as fault
from ..units import check_name
from . import memstate
from .pending import DropRec, Rec, RevertRec, SnapshotRec
from .redo import RedoSnapshots
from .vmdoc import Point, VmDoc, tree_lines
from .vmop import Stun, VmOps
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
        reflink = all(self.client.array(a)["capabilities"].get("reflink") for a in arrays)
        return "cow" if reflink else "redo"

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
            return self._take(dom, doc, snap, description, quiesce, mode, memory)

    def _take(
        self,
        dom: libvirt.virDomain,
        doc: VmDoc,
        snap: str,
        description: str,
        quiesce: bool,
        mode: str | None,
        memory: bool,
    ) -> dict[str, Any]:
        name = dom.name()
        if doc.has(snap):
            raise AlreadyExists(kind="snapshot", ref=f"{name}/{snap}")
        mode = self.mode_of(doc, mode)
        if memory and (mode != "cow" or not dom.isActive() or quiesce):
            raise InvalidInput(
                detail="--memory needs a running VM in COW mode (and no --quiesce: "
                "the guest is paused while its memory is saved)"
            )
        if mode == "redo":
            return _public(RedoSnapshots(self.ops).take(dom, doc, snap, description, quiesce))
        names = {t: f"{name}.{t}@{snap}" for t in doc.disks}
        memname = f"{name}.memory@{snap}"
        doc.pending = SnapshotRec(
            "snapshot", point=snap, vvols=list(names.values()) + ([memname] if memory else [])
        ).to_dict()
        doc.save(self.client)
        targets = list(doc.disks)
        made: list[str] = []
        saved: tuple[str, int] | None = None
        try:
            # the catalog work first; only the array's snapshots wait for the guest
            prepared = self.client.snapshot_prepare(
                [doc.disks[t] for t in targets], [names[t] for t in targets]
            )
            made = [p["id"] for p in prepared]
            fault("vm-snapshot", "prepared")
            with memstate.scratch_file("memory.save") as mpath:
                with Stun(dom, quiesce) as stun:
                    nbytes = memstate.save_paused(dom, mpath) if memory else 0
                    self.client.snapshot_cut(made)
                    fault("vm-snapshot", "cut")
                self.client.snapshot_commit(made)
                if memory:
                    saved = (
                        memstate.store(self.vms, mpath, memname, doc.datastore, doc.pe),
                        nbytes,
                    )
        except BaseException:
            self.ops.discard(made)
            doc.pending = None
            doc.save(self.client)
            raise
        point = Point(
            name=snap,
            parent=doc.current,
            mode="cow",
            disks=dict(zip(targets, made, strict=True)),
            description=description,
            xml=dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
            running=stun.running,
            stun_ms=round(stun.seconds * 1000, 3),
            memory=saved[0] if saved else None,
            memory_bytes=saved[1] if saved else 0,
        )
        doc.add(point)
        doc.current, doc.mode, doc.pending = snap, "cow", None
        doc.save(self.client)
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
            self._revert_cow(doc, point)
        if point.memory:  # carry on where the guest was
            with memstate.scratch_file("memory.save") as mpath:
                memstate.load(self.vms, point.memory, point.memory_bytes, mpath, doc.pe)
                memstate.restore(self.vms, mpath)
            start = True
        elif start:
            self.vms.start(name)
        return {"vm": name, "reverted_to": snap, "current": snap, "started": start}

    def _revert_cow(self, doc: VmDoc, point: Point) -> None:
        op = uuid.uuid4().hex[:8]
        safety = {t: f"{doc.name}.{t}@safety-{op}" for t in doc.disks}
        doc.pending = RevertRec("revert", point=point.name, safety=safety).to_dict()
        doc.save(self.client)
        kept: dict[str, str] = {}
        try:
            for target, vvol in doc.disks.items():
                kept[target] = self.client.vvol_snapshot(vvol, name=safety[target])["id"]
            fault("vm-revert", "safety")
            done: list[str] = []
            try:
                for target, vvol in doc.disks.items():
                    if target in point.disks:
                        self.client.vvol_revert(vvol, point.disks[target])
                        done.append(target)
                        fault("vm-revert", "one-reverted")
            except BaseException:
                for target in done:  # back to where the VM was
                    self.client.vvol_revert(doc.disks[target], kept[target])
                raise
        except BaseException:
            self.ops.drop(list(kept.values()))
            doc.pending = None
            doc.save(self.client)
            raise
        self.ops.drop(list(kept.values()))
        doc.current, doc.pending = point.name, None
        doc.save(self.client)

    # -- delete -----------------------------------------------------------------------------
    def delete(self, name: str, snap: str) -> dict[str, Any]:
        with self.ops.operation(name, "vm-snapshot-delete") as (dom, doc):
            return self._delete(dom, doc, snap)

    def _delete(self, dom: libvirt.virDomain, doc: VmDoc, snap: str) -> dict[str, Any]:
        name = dom.name()
        point = doc.point(snap)
        if point.mode == "redo":
            RedoSnapshots(self.ops).delete(dom, doc, point)
            return {"vm": name, "deleted": snap}
        vvols = list(point.disks.values()) + ([point.memory] if point.memory else [])
        for vid in vvols:  # check everything first: all or nothing
            info = self.client.vvol(vid)
            if info["children"]:
                kids = ", ".join(self.client.vvol(c)["name"] or c for c in info["children"])
                raise InUse(
                    kind="snapshot", ref=f"{name}/{snap}", reason=f"linked clones use it: {kids}"
                )
        doc.remove(snap)
        doc.pending = DropRec("drop", vvols=vvols).to_dict()
        doc.save(self.client)
        self.ops.drop(vvols)
        doc.pending = None
        doc.save(self.client)
        return {"vm": name, "deleted": snap}


# -- recovery (named in vmop.RECOVERY) ----------------------------------------------------------
def recover_snapshot(vms: VmManager, dom: libvirt.virDomain, doc: VmDoc, rec: Rec) -> None:
    """A half-taken snapshot is dropped and a guest it paused resumes."""
    assert isinstance(rec, SnapshotRec)
    ops = VmOps(vms)
    ops.discard([ops.resolve(n) for n in rec.vvols])
    if dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
        dom.resume()  # paused by the snapshot that was cut short


def recover_revert(vms: VmManager, dom: libvirt.virDomain, doc: VmDoc, rec: Rec) -> None:
    """A half-done revert goes back to its safety point (when it was complete)."""
    assert isinstance(rec, RevertRec)
    ops = VmOps(vms)
    kept = {t: ops.resolve(n) for t, n in rec.safety.items()}
    if kept and all(kept.values()):  # every disk back to the safety point
        for target, vid in kept.items():
            vms.client.vvol_revert(doc.disks[target], str(vid))
    ops.drop(list(kept.values()))


def recover_drop(vms: VmManager, dom: libvirt.virDomain, doc: VmDoc, rec: Rec) -> None:
    assert isinstance(rec, DropRec)
    VmOps(vms).drop(list(rec.vvols))


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
