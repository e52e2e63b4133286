"""``vvhost vm move-storage``: a VM's disks, with their snapshot points, move to vvols
in another container (on another array), the guest running or not.

For each disk D of a COW-mode VM (snapshot points D@p1, D@p2, ... oldest first)::

    N          a new vvol in the target container: D's size, name and metadata
    N@p1       copy-diffs(D@p1, base=an empty snapshot of N, into N), snapshot N
    N@pi       copy-diffs(D@pi, base=D@p(i-1), into N), snapshot N   (only what changed)
    the top    stopped VM: copy-diffs(D, base=D@p_last, into N)
               running VM: bind N here, libvirt block copy of the disk onto N's binding
               (REUSE_EXT | TRANSIENT_JOB), wait until every copy is ready, pivot
    commit     the VM's document (disks and every point), its definition and the live
               domain's metadata name the new vvols and the endpoint that serves
               them (another one when the VM's own cannot: see ``movepe``)
    release    unbind the old disks here, delete their snapshots and then them; once
               every disk is in the target container, the config vvol follows

The new vvols carry the old names, so names are ambiguous (use ids) until the old
vvols are gone.  The config vvol records the move (``pending``) before anything is
made, and every new vvol id as it appears::

    {"op": "move-storage", "stage": "copy" | "release", "container": ID,
     "new": {target: N}, "snaps": {target: {point: N@point}}, "temps": [ID, ...],
     "old": [ID, ...], "follow": [ID, ...]}

A move cut short (an error, or a killed ``vvhost``: :func:`recover_move`) settles
disk by disk: a disk the running guest already writes to the new vvol of (pivoted)
goes forward, every other disk goes back (its block copy cancelled, its new vvols
deleted).  After the commit (stage ``release``) everything goes forward.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import Any

import libvirt

from ..errors import CapacityExceeded, InvalidInput, NotFound, VvhostError
from ..faults import host_fault as fault
from . import domainxml as dx
from . import handles as hd
from . import libvirtsecrets, movepe
from .pending import MoveRec, Rec
from .vmdoc import VmDoc
from .vmop import VmOps
from .vms import VmError, VmManager, delete_all

OP = "move-storage"
POLL = 0.1  # seconds between looks at a block copy
COPY_RATE = 8 << 20  # bytes/s a block copy is given at least before it counts as stuck


class MoveRefused(VmError):
    template = "cannot move the storage of VM {vm}: {reason}"


class MoveFailed(VmError):
    template = "moving the storage of VM {vm} failed: {reason}"


@dataclass
class DiskMove:
    """One disk to move: its live vvol and its snapshot points, oldest first."""

    target: str
    old: str
    size: int
    points: list[tuple[str, str]]  # (point name, the old snapshot vvol of it)

    def old_vvols(self) -> list[str]:
        return [self.old] + [snap for _name, snap in self.points]


@dataclass
class Plan:
    container: dict[str, Any]
    disks: list[DiskMove]
    follow: list[str]  # config and memory vvols that move along (vvol move)
    running: bool
    pes: list[str]  # endpoints serving the VM's arrays after the move, best first
    staying: bool  # some disks stay where they are


class StorageMover:
    def __init__(self, vms: VmManager) -> None:
        self.vms = vms
        self.client = vms.client
        self.host = vms.conf.name
        self.ops = VmOps(vms)

    # -- the move ---------------------------------------------------------------------------
    def move(self, name: str, container: str, targets: list[str] | None = None) -> dict[str, Any]:
        with self.ops.operation(name, "vm-move-storage") as (dom, doc):
            return self._move(dom, doc, name, container, targets)

    def _move(
        self,
        dom: libvirt.virDomain,
        doc: VmDoc,
        name: str,
        container: str,
        targets: list[str] | None,
    ) -> dict[str, Any]:
        plan = self._plan(dom, doc, container, targets)
        rec = MoveRec(OP, stage=MoveRec.COPY, container=plan.container["id"], follow=plan.follow)
        doc.pending = rec.to_dict()
        doc.save(self.client)
        t0 = time.perf_counter()
        copied = 0
        try:
            for disk in plan.disks:
                copied += self._copy_points(doc, rec, disk, plan)
            fault("move-storage", "points-copied")
            pe = plan.pes[0] if plan.pes else self._pe(dom, doc)
            if plan.running:
                pe, mirrored = self._mirror(dom, doc, rec, plan)
                copied += mirrored
        except BaseException:
            self.settle(dom, doc)
            raise
        moved = {d.target: rec.new[d.target] for d in plan.disks}
        self._commit(dom, doc, moved, pe)
        fault("move-storage", "committed")
        self._release(doc)
        return {
            "vm": name,
            "container": plan.container["name"],
            "running": plan.running,
            "pe": pe,
            "disks": [
                {
                    "target": d.target,
                    "from": d.old,
                    "to": moved[d.target],
                    "points": len(d.points),
                }
                for d in plan.disks
            ],
            "bytes": copied,
            "seconds": round(time.perf_counter() - t0, 3),
        }

    # -- checks -----------------------------------------------------------------------------
    def _plan(
        self, dom: libvirt.virDomain, doc: VmDoc, container: str, targets: list[str] | None
    ) -> Plan:
        c = self.client.container(container)
        if doc.layers or doc.mode == "redo":
            raise MoveRefused(
                vm=doc.name,
                reason="its disks are qcow2 redo chains; only COW-mode VMs (array "
                "snapshots) move, convert it or delete its snapshots first",
            )
        self._check_datastore(doc, c)
        wanted = list(targets or doc.disks)
        for t in wanted:
            if t not in doc.disks:
                raise InvalidInput(detail=f"VM {doc.name} has no disk {t}")
        infos = {t: self.client.vvol(doc.disks[t]) for t in doc.disks}
        order = sorted(doc.points, key=lambda p: p.created)
        disks = [
            DiskMove(
                target=t,
                old=doc.disks[t],
                size=int(infos[t]["size"]),
                points=[(p.name, p.disks[t]) for p in order if t in p.disks],
            )
            for t in wanted
            if infos[t]["container_id"] != c["id"]
        ]
        staying = [t for t in doc.disks if t not in wanted and infos[t]["container_id"] != c["id"]]
        follow = [] if staying else self._followers(doc, c)
        if not disks and not follow:
            what = f"disk {', '.join(wanted)} is" if targets else "its storage is"
            raise MoveRefused(vm=doc.name, reason=f"{what} already in container {c['name']}")
        self._check_clones(doc, disks)
        running = bool(dom.isActive())
        self._check_bindings(doc, disks, running)
        if running:
            self._check_jobs(dom, doc, disks)
        self._check_room(doc, c, disks, follow)
        stay = [t for t in doc.disks if t not in {d.target for d in disks}]
        pes = self._fitting(dom, doc, c, [doc.disks[t] for t in stay])
        if running and stay and self._pe(dom, doc) in pes:  # the guest keeps its endpoint
            pes = [p for p in pes if p == self._pe(dom, doc)]
        elif running and stay and pes:
            raise MoveRefused(
                vm=doc.name,
                reason=f"its endpoint {self._pe(dom, doc)} cannot serve container "
                f"{c['name']} and the running guest cannot change endpoints for some "
                "disks only; move all its disks or stop it first",
            )
        return Plan(c, disks, follow, running, pes, bool(stay))

    def _fitting(
        self, dom: libvirt.virDomain, doc: VmDoc, c: dict[str, Any], staying: list[str]
    ) -> list[str]:
        """The endpoints that serve the VM's disks once they are in ``c``, best first
        (the VM's own when it can); empty for a VM outside datastores (it keeps its own)."""
        if not doc.datastore:
            return []
        arrays = set(c["arrays"]) | {self.client.vvol(v)["array_id"] for v in staying}
        now = {self.client.vvol(v)["array_id"] for v in doc.disks.values()}
        resolved = self.client.datastore_resolve(doc.datastore, self.host)
        backends = {a["id"]: a["backend"] for a in resolved["arrays"]}
        own = self._pe(dom, doc) if movepe.same_kinds(backends, now, arrays) else None
        conf = self.vms.conf
        rbd = "rbd" in {backends.get(a) for a in arrays}
        found = movepe.fitting(resolved["pes"], arrays, own, conf.pe, conf.protocol, rbd)
        if not found:
            raise MoveRefused(
                vm=doc.name,
                reason=f"no endpoint of datastore {doc.datastore} serves container "
                f"{c['name']} and its other disks for host {self.host}",
            )
        return found

    def _check_datastore(self, doc: VmDoc, c: dict[str, Any]) -> None:
        """A VM's vvols live in its datastore: the container must be one of it."""
        if not doc.datastore:
            return
        ds = self.client.datastore(doc.datastore)
        if c["id"] not in ds["containers"]:
            raise MoveRefused(
                vm=doc.name,
                reason=f"container {c['name']} is not part of its datastore {ds['name']} "
                f"(containers: {', '.join(ds['container_names'])})",
            )

    def _followers(self, doc: VmDoc, c: dict[str, Any]) -> list[str]:
        """The config and memory vvols not yet in the container."""
        ids = [doc.config] + [p.memory for p in doc.points if p.memory]
        return [v for v in ids if self.client.vvol(v)["container_id"] != c["id"]]

    def _check_clones(self, doc: VmDoc, disks: list[DiskMove]) -> None:
        """Linked clones hang from the old vvols (their parents stay on their array)."""
        users = []
        for disk in disks:
            for vid in disk.old_vvols():
                info = self.client.vvol(vid)
                users += [self.client.vvol(k)["name"] or k for k in info["children"]]
        if users:
            raise MoveRefused(
                vm=doc.name,
                reason=f"linked clones hang from its disks or snapshots: {', '.join(users)}; "
                "their parents stay on their array",
            )

    def _check_bindings(self, doc: VmDoc, disks: list[DiskMove], running: bool) -> None:
        """Only this host's running guest may have the old vvols bound (its disks):
        a binding elsewhere is a guest or a reader the move would pull data from under."""
        for disk in disks:
            for vid in disk.old_vvols():
                mine = running and vid == disk.old
                hosts = {b["host"] for b in self.client.bindings(vvol=vid)} - (
                    {self.host} if mine else set()
                )
                if hosts:
                    name = self.client.vvol(vid)["name"] or vid
                    raise MoveRefused(
                        vm=doc.name,
                        reason=f"vvol {name} is bound on host {', '.join(sorted(hosts))}",
                    )

    def _check_jobs(self, dom: libvirt.virDomain, doc: VmDoc, disks: list[DiskMove]) -> None:
        for disk in disks:
            if dom.blockJobInfo(disk.target, 0):
                raise MoveRefused(vm=doc.name, reason=f"disk {disk.target} has a block job running")

    def _check_room(
        self, doc: VmDoc, c: dict[str, Any], disks: list[DiskMove], follow: list[str]
    ) -> None:
        """Refuse up front what cannot fit: every new vvol (its size) and snapshot (at
        most the bytes the old one holds: snapshots are charged what is theirs alone),
        the empty base of the first copy, and what follows, beside the old ones until
        they go.  The control plane's admission of each step stays the judge."""
        need = sum(d.size + sum(self._held_at_most(s) for _, s in d.points) for d in disks)
        need += max((d.size for d in disks), default=0)
        need += sum(int(self.client.vvol(v)["size"]) for v in follow)
        if need > int(c["free"]):
            raise CapacityExceeded(
                container=c["name"], free=c["free"], capacity=c["capacity"], needed=need
            )
        if doc.datastore:
            ds = self.client.datastore(doc.datastore)
            grow = need - sum(int(self.client.vvol(v)["size"]) for v in follow)
            if grow > int(ds["free"]):
                raise CapacityExceeded(
                    container=f"datastore {ds['name']}",
                    free=ds["free"],
                    capacity=ds["capacity"],
                    needed=grow,
                )

    def _held_at_most(self, snap: str) -> int:
        v = self.client.vvol(snap)
        allocated = v.get("allocated")
        return int(allocated) if isinstance(allocated, int) else int(v["size"])

    # -- copying ----------------------------------------------------------------------------
    def _copy_points(self, doc: VmDoc, rec: MoveRec, disk: DiskMove, plan: Plan) -> int:
        """Make the new vvol and bring it through every point (snapshotting it after
        each); a stopped VM's live data last.  Returns the bytes written."""
        info = self.client.vvol(disk.old)
        new = self.client.vvol_create(
            plan.container["id"],
            disk.size,
            type=info["type"],
            name=info["name"],
            metadata=info["metadata"],
            datastore=doc.datastore,
        )["id"]
        self._note(doc, rec, "new", {**rec.new, disk.target: new})
        sources = [snap for _name, snap in disk.points] + ([] if plan.running else [disk.old])
        if not sources:
            return 0
        empty = self.client.vvol_snapshot(new, name=f"{doc.name}.{disk.target}@move-base")["id"]
        self._note(doc, rec, "temps", rec.temps + [empty])
        copied, base = 0, empty
        made: dict[str, str] = {}
        for i, src in enumerate(sources):
            copied += int(self.client.vvol_copy_diffs(src, base, new)["bytes"])
            if base == empty:
                self.ops.drop([empty])
            base = src
            if i < len(disk.points):
                point, old_snap = disk.points[i]
                name = self.client.vvol(old_snap)["name"]
                made[point] = self.client.vvol_snapshot(new, name=name)["id"]
                self._note(doc, rec, "snaps", {**rec.snaps, disk.target: dict(made)})
        return copied

    def _note(self, doc: VmDoc, rec: MoveRec, key: str, value: Any) -> None:
        """Record a step in the config vvol before going on."""
        setattr(rec, key, value)
        doc.pending = rec.to_dict()
        doc.save(self.client)

    def _copy_pe(self, dom: libvirt.virDomain, doc: VmDoc, rec: MoveRec, plan: Plan) -> str | None:
        """The first fitting endpoint whose binding libvirt can add to the running
        domain (tried with the first disk's new vvol, left bound on it)."""
        first = rec.new[plan.disks[0].target]
        why = ""
        candidates: list[str | None] = [*plan.pes] or [self._pe(dom, doc)]
        for pe in candidates:
            handle = self.client.bind_one(first, self.host, pe=pe)
            why = hd.of(handle).hotplug_problem() or ""
            if not why:
                return pe
            self.client.unbind([first], self.host, drop_all=True)
        raise MoveFailed(vm=doc.name, reason=f"block copy of disk {plan.disks[0].target}: {why}")

    def _mirror(
        self, dom: libvirt.virDomain, doc: VmDoc, rec: MoveRec, plan: Plan
    ) -> tuple[str | None, int]:
        """Block copy every disk of the running guest onto its new vvol, then pivot
        each; returns the endpoint the guest now runs on and the bytes copied."""
        disks = plan.disks
        pe = self._copy_pe(dom, doc, rec, plan)
        if plan.staying and pe != self._pe(dom, doc):
            raise MoveFailed(
                vm=doc.name,
                reason=f"the block copy needs endpoint {pe} and some disks stay on "
                f"{self._pe(dom, doc)}; move all its disks or stop it first",
            )
        flags = (
            libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
        )
        for disk in disks:
            handle = self.client.bind_one(rec.new[disk.target], self.host, pe=pe)
            why = hd.of(handle).hotplug_problem()
            if why:
                raise MoveFailed(vm=doc.name, reason=f"block copy of disk {disk.target}: {why}")
            hd.prepare([handle], self.vms.access)
            libvirtsecrets.define_all(self.vms.conn, hd.secrets([handle]))
            try:
                dom.blockCopy(disk.target, dx.copy_dest_xml(handle), None, flags)
            except libvirt.libvirtError as exc:
                raise MoveFailed(
                    vm=doc.name,
                    reason=f"block copy of disk {disk.target}: {exc.get_error_message()}",
                ) from None
        total = self._wait_ready(dom, doc, disks)
        fault("move-storage", "mirror-ready")
        for disk in disks:
            try:
                dom.blockJobAbort(disk.target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            except libvirt.libvirtError as exc:
                raise MoveFailed(
                    vm=doc.name,
                    reason=f"disk {disk.target} did not switch to its new vvol: "
                    f"{exc.get_error_message()}",
                ) from None
            fault("move-storage", "pivoted")
        return pe, total

    def _pe(self, dom: libvirt.virDomain, doc: VmDoc) -> str | None:
        _root, meta = self.vms._meta(dom)
        return meta.pe or doc.pe or self.vms.conf.pe

    def _wait_ready(self, dom: libvirt.virDomain, doc: VmDoc, disks: list[DiskMove]) -> int:
        """Wait until every block copy is ready to pivot; returns their total length."""
        deadline = time.monotonic() + 60 + sum(d.size for d in disks) / COPY_RATE
        while True:
            root = dx.parse(dom.XMLDesc(0))
            for disk in disks:
                state = dx.mirror_of(root, disk.target)
                if state is None or state[0] == "abort":
                    raise MoveFailed(
                        vm=doc.name, reason=f"the block copy of disk {disk.target} stopped"
                    )
            if all(_ready(root, d.target) for d in disks):
                return sum(int(dom.blockJobInfo(d.target, 0).get("end", 0)) for d in disks)
            if time.monotonic() > deadline:
                raise MoveFailed(vm=doc.name, reason="the block copies did not get ready in time")
            time.sleep(POLL)

    # -- commit and release -----------------------------------------------------------------
    def _commit(
        self, dom: libvirt.virDomain, doc: VmDoc, moved: dict[str, str], pe: str | None
    ) -> None:
        """Make the VM's document, its definition and the live domain name the new
        vvols, reached through ``pe``; from here on the move goes forward."""
        rec = MoveRec.from_dict(doc.pending or {"op": OP})
        snaps = rec.snaps
        old: list[str] = []
        renamed: dict[str, str] = {}
        for target, new in moved.items():
            old.append(doc.disks[target])
            renamed[doc.disks[target]] = new
            doc.disks[target] = new
            for point in doc.points:
                if target in point.disks:
                    old.append(point.disks[target])
                    point.disks[target] = snaps[target][point.name]
        for point in doc.points:
            point.xml = _renamed(point.xml, renamed)
        root, meta = self.vms._meta(dom)
        meta = replace(
            meta, disks={t: renamed.get(v, v) for t, v in meta.disks.items()}, pe=pe or meta.pe
        )
        dx.set_meta(root, meta)
        self.vms._point_sources(root, meta)
        self.vms.conn.defineXML(dx.tostring(root))
        if dom.isActive():  # the hook reads the live metadata when the guest stops
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                dx.meta_xml(meta),
                "vvhost",
                dx.NS,
                libvirt.VIR_DOMAIN_AFFECT_LIVE,
            )
        doc.xml, doc.pe = dx.tostring(root), meta.pe
        rec.stage, rec.old = MoveRec.RELEASE, old
        if len(moved) < len(rec.new):
            rec.follow = []  # a disk went back: the config stays with it
        doc.pending = rec.to_dict()
        doc.save(self.client)

    def _release(self, doc: VmDoc) -> None:
        """Drop the old vvols (unbound here first) and move the config along."""
        rec = MoveRec.from_dict(doc.pending or {"op": OP})
        old = list(rec.old)
        bound = {b["vvol"] for b in self.client.bindings(host=self.host)}
        if set(old) & bound:
            self.client.unbind([v for v in old if v in bound], self.host, drop_all=True)
        delete_all(self.client, old)
        for vid in rec.follow:
            self.client.vvol_move(vid, rec.container)
            if vid == doc.config:  # the move itself bumped the config vvol's generation
                doc.generation = self.client.config_read(doc.config)["generation"]
        doc.pending = None
        doc.save(self.client)

    # -- settling a move cut short ----------------------------------------------------------
    def settle(self, dom: libvirt.virDomain, doc: VmDoc) -> list[str]:
        """Finish a move that stopped half-way; returns the disks that moved.  Disks
        the guest runs on from the new vvols go forward, the others go back."""
        rec = MoveRec.from_dict(doc.pending or {"op": OP})
        if rec.stage == MoveRec.RELEASE:
            self._release(doc)
            return []
        new = dict(rec.new)
        live = dx.parse(dom.XMLDesc(0)) if dom.isActive() else None
        moved = {t: n for t, n in new.items() if live is not None and self._runs_on(live, t, n)}
        for target, vid in new.items():
            if target not in moved:
                self._back(dom, live, target, vid, rec.snaps.get(target, {}))
        self.ops.drop(list(rec.temps))
        if moved:
            handle = self._handle(next(iter(moved.values())))
            self._commit(dom, doc, moved, handle["pe"] if handle else None)
            self._release(doc)
        else:
            doc.pending = None
            doc.save(self.client)
        return list(moved)

    def _handle(self, vvol: str) -> dict[str, Any] | None:
        try:
            found = self.client.bindings(host=self.host, vvol=vvol)
        except NotFound:
            return None
        return found[0] if found else None

    def _runs_on(self, live: dx.ET.Element, target: str, vvol: str) -> bool:
        handle = self._handle(vvol)
        return handle is not None and dx.same_source(dx.disk_source(live, target), handle)

    def _back(
        self,
        dom: libvirt.virDomain,
        live: dx.ET.Element | None,
        target: str,
        vvol: str,
        snaps: dict[str, str],
    ) -> None:
        """Undo one disk's new vvols: cancel its block copy, unbind, delete."""
        handle = self._handle(vvol)
        if live is not None and handle is not None:
            mirror = dx.mirror_of(live, target)
            if mirror is not None and dx.same_source(mirror[1], handle):
                _cancel(dom, target)
        if handle is not None:
            self.client.unbind([vvol], self.host, drop_all=True)
        delete_all(self.client, list(snaps.values()) + [vvol])


def recover_move(vms: VmManager, dom: libvirt.virDomain, doc: VmDoc, rec: Rec) -> None:
    """Finish a ``move-storage`` a killed ``vvhost`` left (named in vmop.RECOVERY):
    pivoted disks and a committed move go forward, the rest back.  Leaves ``doc``
    saved with no pending operation."""
    assert isinstance(rec, MoveRec)
    doc.pending = rec.to_dict()
    StorageMover(vms).settle(dom, doc)


def _ready(root: dx.ET.Element, target: str) -> bool:
    state = dx.mirror_of(root, target)
    return state is not None and state[0] == "yes"


def _cancel(dom: libvirt.virDomain, target: str, timeout: float = 60) -> None:
    """Cancel a block copy without pivoting and wait until it is gone."""
    with contextlib.suppress(libvirt.libvirtError):
        dom.blockJobAbort(target, 0)
    deadline = time.monotonic() + timeout
    while dom.blockJobInfo(target, 0):
        if time.monotonic() > deadline:
            raise VvhostError(detail=f"the block copy of disk {target} does not end")
        time.sleep(POLL)


def _renamed(xml: str, renamed: dict[str, str]) -> str:
    """A point's saved definition with its disks' vvol ids replaced."""
    if not xml:
        return xml
    root = dx.parse(xml)
    meta = dx.meta(root)
    if meta is None:
        return xml
    dx.set_meta(root, replace(meta, disks={t: renamed.get(v, v) for t, v in meta.disks.items()}))
    return dx.tostring(root)
