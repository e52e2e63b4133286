"""COW-mode VM snapshots: one consistency group of array snapshots over all of a
VM's disks (the array snapshots instantly: ``dir`` on XFS/btrfs)::

    snapshot   pause (or freeze with --quiesce) -> array snapshot of every disk -> resume;
               the live disks stay the base vvols, the point names the snapshot vvols
    revert     safety snapshot of every disk -> revert every disk to the point ->
               drop the safety snapshots (on any failure: back to the safety, then drop)
    delete     drop the point's snapshot vvols (refused while a clone needs them)

The front both modes share (lease, mode choice, memory state) is
:mod:`vvhost.host.vmsnapshots`; redo mode lives in :mod:`vvhost.host.redo`.
Each step first records what it is about to do in the config vvol (a
:mod:`pending <vvhost.host.pending>` record), so a ``vvhost`` killed half-way is
finished by the next command that touches the VM: a half-taken snapshot is
dropped, a half-done revert goes back to the safety point.  Either way the disks
hold one consistent point.  The recovery functions at the end are named in the
kernel's table (:data:`vvhost.host.vmop.RECOVERY`).
"""

from __future__ import annotations

import uuid

import libvirt

from ..errors import InUse
from ..faults import host_fault as fault
from . import memstate
from .pending import DropRec, Rec, RevertRec, SnapshotRec
from .vmdoc import Point, VmDoc
from .vmop import Stun, VmOps
from .vms import VmManager


class CowSnapshots:
    def __init__(self, ops: VmOps) -> None:
        self.ops = ops
        self.vms = ops.vms
        self.client = ops.client

    def take(
        self,
        dom: libvirt.virDomain,
        doc: VmDoc,
        snap: str,
        description: str,
        quiesce: bool,
        memory: bool,
    ) -> Point:
        name = dom.name()
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
        return point

    def revert(self, doc: VmDoc, point: Point) -> None:
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

    def delete(self, dom: libvirt.virDomain, doc: VmDoc, point: Point) -> None:
        name, snap = dom.name(), point.name
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
