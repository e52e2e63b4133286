"""VM snapshots: one consistency group over all of a VM's disks.

COW mode (the array snapshots instantly: ``dir`` on XFS/btrfs)::

    snapshot   pause (or freeze with --quiesce) -> array snapshot of every disk -> resume;
               the live disks stay the base vvols, the point names the snapshot vvols
    revert     safety snapshot of every disk -> revert every disk to the point ->
               drop the safety snapshots (on any failure: back to the safety, then drop)
    delete     drop the point's snapshot vvols (refused while a clone needs them)

Redo mode (no array COW: ext4) lives in :mod:`vvhost.host.redo`.

Every operation first records what it is about to do in the config vvol
(``pending``), so a ``vvhost`` killed half-way is finished on the next command
that touches the VM: a half-taken snapshot is dropped, a half-done revert goes
back to the safety point.  Either way the disks hold one consistent point.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

import libvirt

from ..errors import AlreadyExists, InUse, InvalidInput, NotFound
from ..faults import host_fault as fault
from ..units import check_name
from . import memstate
from .vmdoc import Point, VmDoc, tree_lines
from .vms import VmError, VmManager


class Stun:
    """Pause (or freeze) a running domain for the duration of a ``with`` block and
    measure how long the guest was stopped."""

    def __init__(self, dom: libvirt.virDomain, quiesce: bool) -> None:
        self.dom = dom
        self.quiesce = quiesce
        self.running = bool(dom.isActive()) and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        self.seconds = 0.0

    def __enter__(self) -> Stun:
        self._t0 = time.perf_counter()
        if not self.running:
            return self
        try:
            if self.quiesce:
                self.dom.fsFreeze()
            else:
                self.dom.suspend()
        except libvirt.libvirtError as exc:
            what = "freeze the guest's filesystems (a guest agent is needed)"
            raise VmError(
                detail=f"cannot {what if self.quiesce else 'pause the VM'}: "
                f"{exc.get_error_message()}"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            if self.quiesce:
                self.dom.fsThaw()
            else:
                self.dom.resume()
        self.seconds = time.perf_counter() - self._t0


class VmSnapshots:
    def __init__(self, vms: VmManager) -> None:
        self.vms = vms
        self.client = vms.client

    # -- reading ----------------------------------------------------------------------------
    def open(self, name: str) -> tuple[libvirt.virDomain, VmDoc]:
        """The domain and its document, with any unfinished operation finished first."""
        dom = self.vms.domain(name)
        _root, meta = self.vms._meta(dom)
        if not meta.config:
            raise InvalidInput(detail=f"VM {name} has no config vvol")
        doc = VmDoc.load(self.client, meta.config)
        if doc.pending:
            self.recover(dom, doc)
        return dom, doc

    def listing(self, name: str) -> dict[str, Any]:
        _dom, doc = self.open(name)
        return {
            "vm": name,
            "mode": doc.mode,
            "current": doc.current,
            "points": [_public(p) for p in sorted(doc.points, key=lambda p: p.created)],
        }

    def tree(self, name: str) -> list[str]:
        _dom, doc = self.open(name)
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
        dom, doc = self.open(name)
        if doc.has(snap):
            raise AlreadyExists(kind="snapshot", ref=f"{name}/{snap}")
        mode = self.mode_of(doc, mode)
        if memory and (mode != "cow" or not dom.isActive() or quiesce):
            raise InvalidInput(
                detail="--memory needs a running VM in COW mode (and no --quiesce: "
                "the guest is paused while its memory is saved)"
            )
        if mode == "redo":
            from .redo import RedoSnapshots

            return _public(RedoSnapshots(self).take(dom, doc, snap, description, quiesce))
        names = {t: f"{name}.{t}@{snap}" for t in doc.disks}
        memname = f"{name}.memory@{snap}"
        doc.pending = {
            "op": "snapshot",
            "point": snap,
            "vvols": list(names.values()) + ([memname] if memory else []),
        }
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
            self._discard(made)
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
        dom, doc = self.open(name)
        point = doc.point(snap)
        if dom.isActive():
            if not force:
                raise InUse(
                    kind="VM", ref=name, reason="it is running; stop it or revert with --force"
                )
            self.vms.stop(name, force=True)
        if point.mode == "redo":
            from .redo import RedoSnapshots

            RedoSnapshots(self).revert(dom, doc, point)
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
        doc.pending = {"op": "revert", "point": point.name, "safety": safety}
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
            self.drop(list(kept.values()))
            doc.pending = None
            doc.save(self.client)
            raise
        self.drop(list(kept.values()))
        doc.current, doc.pending = point.name, None
        doc.save(self.client)

    # -- delete -----------------------------------------------------------------------------
    def delete(self, name: str, snap: str) -> dict[str, Any]:
        dom, doc = self.open(name)
        point = doc.point(snap)
        if point.mode == "redo":
            from .redo import RedoSnapshots

            RedoSnapshots(self).delete(dom, doc, point)
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
        doc.pending = {"op": "drop", "vvols": vvols}
        doc.save(self.client)
        self.drop(vvols)
        doc.pending = None
        doc.save(self.client)
        return {"vm": name, "deleted": snap}

    # -- recovery ---------------------------------------------------------------------------
    def recover(self, dom: libvirt.virDomain, doc: VmDoc) -> str:
        """Finish what a killed ``vvhost`` left: one consistent point, nothing orphaned."""
        p = doc.pending or {}
        what = str(p.get("op"))
        if what == "snapshot":
            self._discard([self._resolve(n) for n in p.get("vvols", [])])
            if dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()  # paused by the snapshot that was cut short
        elif what == "revert":
            kept = {t: self._resolve(n) for t, n in p.get("safety", {}).items()}
            if kept and all(kept.values()):  # every disk back to the safety point
                for target, vid in kept.items():
                    self.client.vvol_revert(doc.disks[target], str(vid))
            self.drop(list(kept.values()))
        elif what == "drop":
            self.drop(list(p.get("vvols", [])))
        elif what == "move-storage":
            from .movestorage import recover_move

            recover_move(self.vms, dom, doc, p)
        elif what.startswith("redo-"):
            from .redo import RedoSnapshots

            RedoSnapshots(self).recover(dom, doc, p)
        doc.pending = None
        doc.save(self.client)
        return what

    def _resolve(self, ref: str) -> str | None:
        try:
            return str(self.client.vvol(ref)["id"])
        except NotFound:
            return None

    def _discard(self, snaps: Sequence[str | None]) -> None:
        """Drop the snapshots of a cut-short VM snapshot: prepared ones are aborted,
        taken ones deleted."""
        ids = [s for s in snaps if s]
        if ids:
            self.client.snapshot_abort(ids)
            self.drop(ids)

    def drop(self, vvols: Sequence[str | None]) -> None:
        """Delete vvols that may already be gone (idempotent)."""
        for vid in vvols:
            if vid:
                with contextlib.suppress(NotFound):
                    self.client.vvol_delete(vid)


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
