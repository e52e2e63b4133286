"""Redo-mode VM snapshots: each disk is a chain of vvols, a raw bottom (the disk
as created) under qcow2 layers, each written inside a raw vvol of its own::

    snapshot   new empty overlay vvol per disk; a running VM switches to it
               (external disk-only snapshot); the old top is frozen and the
               point records the frozen chain
    revert     a new empty overlay on the point's chain becomes the live top;
               the old top and layers nobody needs any more are deleted
    delete     the point's top X is merged with the one layer C above it (block
               commit while running, ``qemu-img commit`` when not) and C goes;
               with no layer above, X goes; with two or more, X stays

The chain lives in the domain definition (``<backingStore>``) and in the vvhost
metadata (``<vvhost:layer>``), so no backing name inside an image matters.
Each step is recorded in the document's ``pending`` first; ``recover`` finishes
a step libvirt already took and undoes one it did not.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import libvirt

from ..faults import host_fault as fault
from ..tools import qemuimg
from . import domainxml as dx
from . import handles as hd
from .hook import ensure_bound, undo
from .pending import DropRec, Rec, RedoDeleteRec, RedoLayersRec
from .vmdoc import Point, VmDoc
from .vmop import VmOps
from .vms import MiB, VmError, VmManager, raw_target

MAX_LAYERS = 16
CLUSTER = 64 * 1024
JOB_TIMEOUT = 600.0

Chains = dict[str, list[str]]  # target -> vvols, bottom first, the top last


class RedoSnapshots:
    def __init__(self, ops: VmOps) -> None:
        self.ops = ops
        self.vms = ops.vms
        self.client = ops.client
        self.host = ops.vms.conf.name

    # -- snapshot ---------------------------------------------------------------------------
    def take(
        self, dom: libvirt.virDomain, doc: VmDoc, snap: str, description: str, quiesce: bool
    ) -> Point:
        live = _live(doc)
        for target, chain in live.items():
            if len(chain) + 1 > MAX_LAYERS:
                raise VmError(
                    detail=f"disk {target} of {doc.name} would have {len(chain) + 1} layers "
                    f"(at most {MAX_LAYERS}); delete a snapshot first"
                )
        running = bool(dom.isActive())
        op = uuid.uuid4().hex[:8]
        names = {t: f"{doc.name}.{t}.{snap}-{op}" for t in live}
        doc.pending = RedoLayersRec(
            "redo-snapshot", point=snap, vvols=names, description=description, running=running
        ).to_dict()
        doc.save(self.client)
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        made: dict[str, str] = {}
        try:
            made = self._overlays(doc, names, keep_bound=running)
            t0 = time.perf_counter()
            if running:
                self._switch(dom, doc, made, quiesce)
                fault("redo-snapshot", "switched")
            stun = time.perf_counter() - t0
        except BaseException:
            self._abandon(doc, made)
            raise
        return self._finish_take(dom, doc, made, xml, round(stun * 1000, 3) if running else None)

    def _finish_take(
        self, dom: libvirt.virDomain, doc: VmDoc, made: dict[str, str], xml: str, stun: float | None
    ) -> Point:
        """The overlays are (or are about to be) the live tops: define, then record."""
        rec = RedoLayersRec.from_dict(doc.pending or {"op": "redo-snapshot"})
        frozen = _live(doc)
        self._define(dom, doc, {t: chain + [made[t]] for t, chain in frozen.items()})
        point = Point(
            name=rec.point,
            parent=doc.current,
            mode="redo",
            layers=frozen,
            description=rec.description,
            xml=xml,
            running=rec.running,
            stun_ms=stun,
        )
        doc.add(point)
        doc.current, doc.mode, doc.pending = point.name, "redo", None
        doc.save(self.client)
        return point

    def _switch(
        self, dom: libvirt.virDomain, doc: VmDoc, made: dict[str, str], quiesce: bool
    ) -> None:
        """The running VM writes to the overlays from now on (all disks at once)."""
        with self._bound(doc, list(made.values())) as handles:
            xml = dx.snapshot_xml({t: handles[v] for t, v in made.items()})
        flags = (
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        )
        if quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        try:
            dom.snapshotCreateXML(xml, flags)
        except libvirt.libvirtError as exc:
            raise VmError(
                detail=f"VM {doc.name}: the disk-only snapshot failed: {exc.get_error_message()}"
            ) from None

    # -- revert -----------------------------------------------------------------------------
    def revert(self, dom: libvirt.virDomain, doc: VmDoc, point: Point) -> None:
        if set(point.layers) != set(doc.disks):
            raise VmError(detail=f"{doc.name}/{point.name} does not cover the VM's disks")
        op = uuid.uuid4().hex[:8]
        names = {t: f"{doc.name}.{t}.{point.name}-{op}" for t in doc.disks}
        doc.pending = RedoLayersRec("redo-revert", point=point.name, vvols=names).to_dict()
        doc.save(self.client)
        before = _used(doc)
        made: dict[str, str] = {}
        try:
            made = self._overlays(doc, names, keep_bound=False)
            self._define(dom, doc, _onto(point, made))
        except BaseException:
            self._abandon(doc, made)
            raise
        doc.current = point.name
        self._collect(doc, before)

    # -- delete -----------------------------------------------------------------------------
    def delete(self, dom: libvirt.virDomain, doc: VmDoc, point: Point) -> None:
        merges = {
            t: m for t, m in ((t, self._merge_plan(doc, point, t)) for t in point.layers) if m
        }
        before = _used(doc)
        doc.remove(point.name)
        doc.pending = RedoDeleteRec(
            "redo-delete", point=point.name, merges=merges, before=sorted(before)
        ).to_dict()
        doc.save(self.client)
        try:
            for target, (child, base) in merges.items():
                self._merge(dom, doc, target, child, base)
                fault("redo-delete", "merged")
        except BaseException:
            doc.pending = None  # the layers stay as they were: every chain still reads right
            doc.save(self.client)
            raise
        self._finish_delete(dom, doc, merges, before)

    def _finish_delete(
        self, dom: libvirt.virDomain, doc: VmDoc, merges: dict[str, list[str]], before: set[str]
    ) -> None:
        gone = {child: base for child, base in merges.values()}
        if gone:
            self._define(dom, doc, {t: _without(c, gone) for t, c in _live(doc).items()})
            for p in doc.points:
                p.layers = {t: _without(c, gone) for t, c in p.layers.items()}
        self._collect(doc, before)

    def _merge_plan(self, doc: VmDoc, point: Point, target: str) -> list[str] | None:
        """[C, X]: merge layer C into the point's top X, when C is the only layer
        right above X and nothing else reads X as it is now."""
        x = point.layers[target][-1]
        others = [p.layers.get(target, []) for p in doc.points if p is not point]
        others.append(_live(doc)[target])
        if any(chain and chain[-1] == x for chain in others):
            return None  # X is another point's content, or the live top
        kids = {c[i + 1] for c in others for i in range(len(c) - 1) if c[i] == x}
        if len(kids) != 1:
            return None
        child = kids.pop()
        owned = doc.all_vvols()
        for vid in (x, child):
            info = self.client.vvol(vid)
            if set(info["snapshots"] + info["children"]) - owned:
                return None  # another VM reads it
        return [child, x]

    def _merge(
        self, dom: libvirt.virDomain, doc: VmDoc, target: str, child: str, base: str
    ) -> None:
        if dom.isActive() and child in _live(doc)[target]:
            self._block_commit(dom, doc, target, child, base)
        else:
            self._offline_commit(doc, child, base)

    def _block_commit(
        self, dom: libvirt.virDomain, doc: VmDoc, target: str, child: str, base: str
    ) -> None:
        with self._bound(doc, [child, base]) as handles:
            root = dx.parse(dom.XMLDesc(0))
        top_i = dx.chain_index(root, target, handles[child])
        base_i = dx.chain_index(root, target, handles[base])
        if top_i is None or base_i is None:
            raise VmError(detail=f"VM {doc.name}: disk {target} does not open its layers")
        active = _live(doc)[target][-1] == child
        flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if active else 0
        top = None if active else f"{target}[{top_i}]"
        try:
            dom.blockCommit(target, f"{target}[{base_i}]", top, 0, flags)
            _wait_job(dom, target, active)
            if active:
                _pivot(dom, target)
        except libvirt.libvirtError as exc:
            with contextlib.suppress(libvirt.libvirtError):
                dom.blockJobAbort(target, 0)
            raise VmError(
                detail=f"VM {doc.name}: merging a layer of {target} failed: "
                f"{exc.get_error_message()}"
            ) from None
        if dx.chain_index(dx.parse(dom.XMLDesc(0)), target, handles[child]) is not None:
            raise VmError(detail=f"VM {doc.name}: the merge of a layer of {target} did not end")

    def _offline_commit(self, doc: VmDoc, child: str, base: str) -> None:
        with self._bound(doc, [child, base]) as handles:
            fmt = "raw" if base in _bottoms(doc) else "qcow2"
            spec = {
                "driver": "qcow2",
                "file": dx.blockdev(handles[child]),
                "backing": {"driver": fmt, "file": dx.blockdev(handles[base])},
            }
            qemuimg.commit("json:" + json.dumps(spec), hd.objects(handles.values()))

    def flatten(self, doc: VmDoc, chain: list[str], dest: str) -> None:
        """Write what ``chain`` (bottom first) reads into the raw vvol ``dest``."""
        with self._bound(doc, [*chain, dest]) as handles:
            spec: dict[str, Any] = {"driver": "raw", "file": dx.blockdev(handles[chain[0]])}
            for layer in chain[1:]:
                spec = {"driver": "qcow2", "file": dx.blockdev(handles[layer]), "backing": spec}
            target = hd.of(handles[dest]).image_args(target=True, with_objects=False)
            objects = hd.objects(handles.values())  # the target's too, each once
            qemuimg.convert([*objects, "json:" + json.dumps(spec)], target)

    # -- recovery ---------------------------------------------------------------------------
    def recover(self, dom: libvirt.virDomain, doc: VmDoc, rec: Rec) -> None:
        """Finish a step libvirt took, undo one it did not (the caller clears pending)."""
        what = rec.op
        if isinstance(rec, RedoLayersRec):
            names: dict[str, str] = dict(rec.vvols)
            made = {t: self.ops.resolve(n) for t, n in names.items()}
            found = {t: v for t, v in made.items() if v}
            if len(found) == len(names) and self._in_use(dom, found):
                if what == "redo-snapshot":
                    self._finish_take(dom, doc, found, "", None)
                else:
                    point = doc.point(rec.point)
                    before = _used(doc)
                    self._define(dom, doc, _onto(point, found))
                    doc.current = point.name
                    self._collect(doc, before)
            else:
                self._drop(list(found.values()))
            if dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        elif isinstance(rec, RedoDeleteRec):
            self._recover_delete(dom, doc, dict(rec.merges), set(rec.before))
        elif isinstance(rec, DropRec):
            self._drop(list(rec.vvols))

    def _recover_delete(
        self, dom: libvirt.virDomain, doc: VmDoc, merges: dict[str, list[str]], before: set[str]
    ) -> None:
        """A merge libvirt finished (the child is out of the chain it runs) is
        recorded; any other merge is left undone: the chains still read right."""
        done = {}
        for target, (child, base) in merges.items():
            if self._in_use(dom, {target: child}):
                if dom.isActive():
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.blockJobAbort(target, 0)
            else:
                done[target] = [child, base]
        self._finish_delete(dom, doc, done, before)

    def _in_use(self, dom: libvirt.virDomain, vvols: dict[str, str]) -> bool:
        """Does the domain (the running one, else its definition) open every one of
        ``vvols`` (target -> vvol) in that disk's chain?"""
        if dom.isActive():
            root = dx.parse(dom.XMLDesc(0))
            bound = {b["vvol"]: b for b in self.client.bindings(host=self.host)}
            return all(
                v in bound and dx.chain_index(root, t, bound[v]) is not None
                for t, v in vvols.items()
            )
        _root, meta = self.vms._meta(dom)
        return all(v == meta.disks.get(t) or v in meta.layers.get(t, []) for t, v in vvols.items())

    # -- building blocks --------------------------------------------------------------------
    def _overlays(self, doc: VmDoc, names: dict[str, str], keep_bound: bool) -> dict[str, str]:
        """An empty qcow2 overlay vvol per disk, as big as the disk (target -> vvol)."""
        made: dict[str, str] = {}
        try:
            for target, name in names.items():
                vsize = int(self.client.vvol(_live(doc)[target][0])["size"])
                v = self.client.vvol_create(
                    None,
                    f"{_overlay_mib(vsize)}M",
                    name=name,
                    metadata={"vm": doc.name, "target": target},
                    datastore=doc.datastore,
                    pe=doc.pe,
                )
                made[target] = v["id"]
                self._format(doc, v["id"], vsize, keep_bound)
        except BaseException:
            self._drop(list(made.values()))
            raise
        return made

    def _format(self, doc: VmDoc, vvol: str, vsize: int, keep_bound: bool) -> None:
        handle = self.client.bind_one(vvol, self.host, pe=doc.pe)
        try:
            hd.prepare([handle], self.vms.access)  # its CHAP account or Ceph key, here
            with tempfile.TemporaryDirectory(prefix="vvredo") as tmp:
                image = os.path.join(tmp, "layer.qcow2")
                qemuimg.create(image, vsize, "qcow2", {"cluster_size": str(CLUSTER)})
                qemuimg.convert(["-f", "raw", image], raw_target(handle))
        except BaseException:
            self.client.unbind([vvol], self.host, drop_all=True)
            raise
        if not keep_bound:
            self.client.unbind([vvol], self.host, drop_all=True)

    def _define(self, dom: libvirt.virDomain, doc: VmDoc, chains: Chains) -> None:
        """Make ``chains`` the VM's disks: the persistent definition, the running
        domain's metadata (so release unbinds every layer) and the document."""
        root, meta = self.vms._meta(dom)
        new = dx.VmMeta(
            datastore=meta.datastore,
            config=meta.config,
            disks={t: c[-1] for t, c in chains.items()},
            pe=meta.pe,
            layers={t: c[:-1] for t, c in chains.items() if len(c) > 1},
        )
        dx.set_meta(root, new)
        self.vms._point_sources(root, new)
        self.vms.conn.defineXML(dx.tostring(root))
        if dom.isActive():
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                dx.meta_xml(new),
                "vvhost",
                dx.NS,
                libvirt.VIR_DOMAIN_AFFECT_LIVE,
            )
        doc.xml, doc.disks, doc.layers = dx.tostring(root), dict(new.disks), dict(new.layers)

    def _abandon(self, doc: VmDoc, made: dict[str, str]) -> None:
        """A step failed before libvirt took it: its overlays go, nothing else changed."""
        self._drop(list(made.values()))
        doc.pending = None
        doc.save(self.client)

    def _collect(self, doc: VmDoc, before: set[str]) -> None:
        """Delete what no chain needs any more (recorded first), then clear pending."""
        garbage = sorted(before - _used(doc))
        doc.pending = DropRec("redo-drop", vvols=garbage).to_dict() if garbage else None
        doc.save(self.client)
        if garbage:
            self._drop(garbage)
            doc.pending = None
            doc.save(self.client)

    @contextlib.contextmanager
    def _bound(self, doc: VmDoc, vvols: list[str]) -> Iterator[dict[str, dict[str, Any]]]:
        """Bindings of ``vvols`` here for a while; what this made is dropped after."""
        want = dx.VmMeta(None, None, {str(i): v for i, v in enumerate(vvols)}, doc.pe)
        handles, made = ensure_bound(self.client, self.host, want, doc.pe, self.vms.access)
        try:
            yield handles
        finally:
            undo(self.client, self.host, made)

    def _drop(self, vvols: list[str]) -> None:
        """Unbind here and delete vvols that may already be gone."""
        for vid in vvols:
            with contextlib.suppress(Exception):
                if self.client.bindings(host=self.host, vvol=vid):
                    self.client.unbind([vid], self.host, drop_all=True)
        self.ops.drop(list(vvols))


def recover_redo(vms: VmManager, dom: libvirt.virDomain, doc: VmDoc, rec: Rec) -> None:
    """Recovery of every redo-mode step (named in vmop.RECOVERY)."""
    RedoSnapshots(VmOps(vms)).recover(dom, doc, rec)


def _live(doc: VmDoc) -> Chains:
    return {t: list(doc.layers.get(t, [])) + [top] for t, top in doc.disks.items()}


def _bottoms(doc: VmDoc) -> set[str]:
    """The raw disks under every chain."""
    out = {c[0] for c in _live(doc).values()}
    return out | {c[0] for p in doc.points for c in p.layers.values() if c}


def _used(doc: VmDoc) -> set[str]:
    out = {v for c in _live(doc).values() for v in c}
    for p in doc.points:
        out.update(v for c in p.layers.values() for v in c)
    return out


def _onto(point: Point, tops: dict[str, str]) -> Chains:
    """The point's chains with a new top on each."""
    return {t: chain + [tops[t]] for t, chain in point.layers.items()}


def _without(chain: list[str], gone: dict[str, str]) -> list[str]:
    """``chain`` with each merged layer replaced by the layer it went into."""
    out: list[str] = []
    for v in chain:
        v = gone.get(v, v)
        if not out or out[-1] != v:
            out.append(v)
    return out


def _overlay_mib(vsize: int) -> int:
    out = qemuimg.measure(vsize, "qcow2", {"cluster_size": str(CLUSTER)})
    return max(1, math.ceil(int(out["fully-allocated"]) / MiB))


def _wait_job(dom: libvirt.virDomain, target: str, ready: bool) -> None:
    """Wait until the block job on ``target`` is ready to pivot (``ready``) or gone."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        info = dom.blockJobInfo(target, 0)
        if not info or (ready and info.get("end", 0) > 0 and info["cur"] == info["end"]):
            if ready and not info:
                raise VmError(detail=f"the block job on {target} ended before it was ready")
            return
        if time.monotonic() > deadline:
            raise VmError(detail=f"the block job on {target} did not finish in {JOB_TIMEOUT:.0f} s")
        time.sleep(0.1)


def _pivot(dom: libvirt.virDomain, target: str) -> None:
    """Switch ``target`` to the commit's base; a job not quite ready is tried again."""
    for _ in range(50):
        try:
            dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            break
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
                raise
            time.sleep(0.1)
    _wait_job(dom, target, False)
