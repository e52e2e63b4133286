"""Snapshots, clones and revert: the copy-on-write hierarchy.

    base (live, writable)  refs = 2
     ├── base@s1  snapshot, read-only, parent = base
     └── base@s2  snapshot, read-only, parent = base
          └── c1  linked clone, parent = base@s2   (base@s2 refs = 1)

Revert of base to s1 keeps s2: the array stages s1's data as base's next data
(dir: a copy beside it, a reflink where it can; rbd: a clone of s1, constant
time), then swaps it in (dir: an atomic rename; rbd: the image names).  Before
the commit point the base is untouched and an interrupted revert drops what was
staged; after it, recovery finishes the swap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..arrays.base import Progress
from ..catalog import bindrepo, repo, tenancy, vvolrepo
from ..errors import InUse, InvalidInput, VvhostError
from ..model import CLONE, CREATING, READY, REVERTING, SNAPSHOT, Container, JournalEntry, Vvol
from ..spacemodel import copy_estimate, thin
from ..units import check_name
from .bindings import ensure_unbound
from .context import Context
from .datastores import check_datastore_room
from .vvols import VvolOps, new_vvol, undo_new


def _label(v: Vvol) -> str:
    return v.name or v.id[:8]


class CowOps:
    def __init__(self, ctx: Context, vvols: VvolOps) -> None:
        self.ctx = ctx
        self.vvols = vvols
        # prepared snapshots whose data is cut (a restart undoes every prepared one)
        self._cut: set[str] = set()

    def snapshot(
        self, ref: str, name: str | None = None, op_id: str | None = None
    ) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            base_id = self.ctx.vvol(conn, ref).id
        with self.ctx.locks.hold([base_id]):
            snap, base = self._prepare_one(ref, name, op_id, alone=True)
            backend = self.ctx.backend(base.array)
            out = self._fill(
                snap.op or "", "snapshot", snap, lambda _: backend.snapshot(base.id, snap.id)
            )
        self.vvols.space.refresh_family_soon(snap.id)  # diff walks: after the answer
        return {**out, **self.vvols.show(snap.id)}

    def _copy_cost(self, conn: Any, src: Vvol, array_id: str) -> int:
        """Physical bytes a snapshot or clone of ``src`` on ``array_id`` takes at first."""
        arr = repo.get_array(conn, src.array)
        instant = bool(arr and arr.capabilities.get("instant")) and array_id == src.array
        if instant:
            return 0
        try:
            return copy_estimate(False, self.ctx.backend(src.array).allocated(src.id))
        except VvhostError:
            return src.size

    def _refuse_torn(self, conn: Any, v: Vvol, dst_array: str, what: str) -> None:
        """A copy of a vvol that a host may be writing is only a real point in time
        when the array clones it atomically (FICLONE on a reflink array, same array);
        a sparse copy could capture a state that never existed: refuse it."""
        arr = repo.get_array(conn, v.array)
        if dst_array == v.array and arr is not None and arr.capabilities.get("instant"):
            return
        writers = sorted(
            {b.host for b in bindrepo.find_bindings(conn, vvol=v.id) if not b.readonly}
        )
        if writers:
            raise InUse(
                kind="vvol",
                ref=v.name or v.id,
                reason=f"bound writable for {', '.join(writers)}; a {what} by copy (no "
                "reflink here) while it is written could capture a state that never "
                "existed: unbind it first (VM snapshots on such arrays use qcow2 layers)",
            )

    def _prepare_one(
        self, ref: str, name: str | None, op_id: str | None, alone: bool = False
    ) -> tuple[Vvol, Vvol]:
        """The catalog half of a snapshot: its row (creating) and journal entry.
        The caller holds the base's lock.  ``alone``: not part of a group whose
        guest is paused for the cut, so a writable binding may be writing now."""
        if name is not None:
            check_name(name, what="snapshot name")
        op = self.ctx.new_op(op_id)
        with self.ctx.db.tx() as conn:
            base = self.ctx.ready(self.ctx.vvol(conn, ref))
            self.ctx.source(base)
            if base.is_snapshot:
                raise InvalidInput(
                    detail=f"vvol {ref!r} is a snapshot; snapshot its base vvol instead"
                )
            if alone:
                self._refuse_torn(conn, base, base.array, "snapshot")
            c = self.vvols.containers.get(conn, base.container)
            cost = self._copy_cost(conn, base, base.array)
            self.vvols.space.admit(conn, c, cost, cost, "snapshot", keep_reserve=True)
            snap = _snapshot_row(base, c, name, op, cost)
            check_datastore_room(conn, base.datastore, cost)
            if name is None:
                snap = _renamed(snap, f"{_label(base)}@{snap.id[:8]}")
            vvolrepo.insert(conn, snap)
            vvolrepo.add_ref(conn, base.id, 1)
            self.ctx.journal(conn, op, "snapshot", snap.id, {"base": base.id})
        return snap, base

    # -- consistency groups: prepare (catalog) / cut (the data, at once) / commit / abort --
    def prepare_group(self, refs: list[str], names: list[str | None]) -> list[dict[str, Any]]:
        """Make the catalog rows of one snapshot per vvol: ``cut`` then captures them
        all at once (the only part a paused guest waits for) and ``commit`` makes
        them ready.  On reflink arrays each volume is cloned here already, while
        the guest still runs, so that ``cut`` only remaps what changed since."""
        if len(refs) != len(names) or len(set(refs)) != len(refs):
            raise InvalidInput(detail="give each vvol once, with one name each")
        made: list[Vvol] = []
        try:
            for ref, name in zip(refs, names, strict=True):
                with self.ctx.db.tx() as conn:
                    base_id = self.ctx.vvol(conn, ref).id
                with self.ctx.locks.hold([base_id]):
                    snap, base = self._prepare_one(ref, name, None)
                    made.append(snap)
                    self.ctx.backend(snap.array).prepare_snapshot(base.id, snap.id)
        except BaseException:
            self.abort_group([v.id for v in made])
            raise
        return [{"id": v.id, "name": v.name, "base": v.parent, "op": v.op} for v in made]

    def cut_group(self, snap_ids: list[str]) -> list[dict[str, Any]]:
        """Capture the data of prepared snapshots: where ``prepare`` cloned already,
        remap the chunks written since (found from extent maps); elsewhere clone or
        copy now.  The copies are staged beside the snapshots' places, not yet
        synced: this is all a paused guest waits for; ``commit_group`` does the rest."""
        with self.ctx.db.tx() as conn:
            snaps = [self._prepared(conn, sid) for sid in snap_ids]
            bases = [self.ctx.vvol(conn, s.parent or "") for s in snaps]
        with self.ctx.locks.hold([b.id for b in bases]):
            try:
                for snap, base in zip(snaps, bases, strict=True):
                    if self.ctx.ready(base).size != snap.size:
                        raise InvalidInput(
                            detail=f"vvol {_label(base)} changed size since the snapshot "
                            "was prepared"
                        )

                # each array cuts its share of the group at once (rbd: in parallel,
                # one monitor proposal for all the snapshot ids)
                per_array: dict[str, list[tuple[str, str]]] = {}
                for snap, base in zip(snaps, bases, strict=True):
                    per_array.setdefault(snap.array, []).append((base.id, snap.id))
                for array_id, cuts in per_array.items():
                    self.ctx.backend(array_id).cut_snapshots(cuts)
                    self._cut.update(sid for _base, sid in cuts)
            except BaseException:
                self.abort_group(snap_ids)
                raise
        return [{"id": s.id, "name": s.name, "base": s.parent, "state": s.state} for s in snaps]

    def commit_group(self, snap_ids: list[str]) -> list[dict[str, Any]]:
        """Make cut snapshots durable, read-only and ready."""
        with self.ctx.db.tx() as conn:
            snaps = [self._prepared(conn, sid) for sid in snap_ids]
        for snap in snaps:
            if snap.id not in self._cut:
                raise InvalidInput(detail=f"snapshot {_label(snap)} was not cut")
        try:
            for snap in snaps:
                self.ctx.backend(snap.array).commit_snapshot(snap.id)
            self.ctx.fault("snapshot-group", "committed")
            with self.ctx.db.tx() as conn:
                for snap in snaps:
                    locator = self.ctx.backend(snap.array).locator(snap.id)
                    vvolrepo.force(conn, snap.id, state=READY, op=None, locator=locator)
                    repo.journal_remove(conn, snap.op or "")
            self._cut.difference_update(snap_ids)
        except BaseException:
            self.abort_group(snap_ids)
            raise
        self.vvols.space.refresh_family_soon(*snap_ids)
        with self.ctx.db.tx() as conn:
            return [self.vvols.describe(conn, vvolrepo.get(conn, s.id) or s) for s in snaps]

    def abort_group(self, snap_ids: list[str]) -> None:
        """Drop prepared snapshots that were not committed (idempotent)."""
        self._cut.difference_update(snap_ids)
        for sid in snap_ids:
            with self.ctx.db.tx() as conn:
                v = vvolrepo.get(conn, sid)
            if v is None or v.state != CREATING or not v.op:
                continue
            undo_new(
                self.ctx,
                JournalEntry(id=v.op, op="snapshot", vvol=v.id, step="begin", args={}, created=0),
            )

    def _prepared(self, conn: Any, sid: str) -> Vvol:
        v = self.ctx.vvol(conn, sid)
        if v.state != CREATING or not v.is_snapshot or not v.op:
            raise InvalidInput(detail=f"vvol {sid!r} is not a prepared snapshot")
        return v

    def clone(
        self,
        ref: str,
        linked: bool = False,
        container: str | None = None,
        name: str | None = None,
        op_id: str | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        if name is not None:
            check_name(name, what="clone name")
        op = self.ctx.new_op(op_id)
        with self.ctx.db.tx() as conn:
            src = self.ctx.vvol(conn, ref)
        with self.ctx.locks.hold([src.id]):
            with self.ctx.db.tx() as conn:
                src = self.ctx.ready(self.ctx.vvol(conn, ref))
                self.ctx.source(src)
                c = self.vvols.containers.get(conn, container or src.container)
                if linked and src.array not in c.arrays:
                    raise InvalidInput(
                        detail=f"a linked clone lives on its parent's array; container "
                        f"{c.name!r} has no share of it (use a full clone)"
                    )
                array_id = self.vvols.place(c, prefer=src.array)
                self._refuse_torn(conn, src, array_id, "clone")
                cost = self._copy_cost(conn, src, array_id)
                charged = cost if linked else src.size  # a linked clone: its unique bytes
                self.vvols.space.admit(conn, c, charged, cost, "clone", keep_reserve=True)
                clone = new_vvol(
                    container=c,
                    array_id=array_id,
                    size=src.size,
                    type=src.type,
                    name=name,
                    metadata={},
                    parent=src.id if linked else None,
                    relation=CLONE if linked else None,
                    op=op,
                    datastore=src.datastore if c.id in self._ds_containers(conn, src) else None,
                    tenant=tenant or src.tenant,
                    charge=charged,
                    held=cost,
                )
                check_datastore_room(conn, clone.datastore, charged)
                vvolrepo.insert(conn, clone)
                if linked:
                    vvolrepo.add_ref(conn, src.id, 1)
                self.ctx.journal(conn, op, "clone", clone.id, {"source": src.id})
            out = self._fill(op, "clone", clone, self._cloner(src, clone, linked))
        self.vvols.space.refresh_family_soon(clone.id)
        return {**out, **self.vvols.show(clone.id)}

    def _cloner(self, src: Vvol, clone: Vvol, linked: bool) -> Callable[[Progress], str]:
        """How the clone's data is made: by the array when the clone lands on the
        source's array, else copied from the source's array into the other."""
        if clone.array == src.array:
            backend = self.ctx.backend(src.array)
            return lambda tick: backend.clone(src.id, clone.id, clone.container, linked, tick)

        def across(tick: Progress) -> str:
            with self.ctx.backend(src.array).open(src.id) as io:
                self.ctx.backend(clone.array).copy_in(
                    clone.id, clone.container, [(clone.id, io)], tick
                )
            return "copy"

        return across

    @staticmethod
    def _ds_containers(conn: Any, src: Vvol) -> list[str]:
        """A clone stays in its source's datastore when it lands in one of its containers."""
        if src.datastore is None:
            return []
        ds = tenancy.get_datastore(conn, src.datastore)
        return ds.containers if ds else []

    def _fill(
        self, op: str, kind: str, new: Vvol, make: Callable[[Progress], str]
    ) -> dict[str, Any]:
        """Make the new vvol's data with ``make`` and the vvol ready (or undo everything)."""
        entry = JournalEntry(id=op, op=kind, vvol=new.id, step="begin", args={}, created=0)
        backend = self.ctx.backend(new.array)
        try:
            with self.ctx.undo_on_error(lambda: undo_new(self.ctx, entry), op):
                make(self.ctx.progress.callback(op))
                if new.readonly:
                    backend.set_readonly(new.id, True)
                self.ctx.fault(kind, "copied")
                with self.ctx.db.tx() as conn:
                    locator = backend.locator(new.id)
                    vvolrepo.force(conn, new.id, state=READY, op=None, locator=locator)
                    repo.journal_remove(conn, op)
                    return self.vvols.describe(conn, vvolrepo.get(conn, new.id) or new)
        finally:
            self.ctx.progress.drop(op)

    def revert(
        self, ref: str, to: str, generation: int | None = None, op_id: str | None = None
    ) -> dict[str, Any]:
        op = self.ctx.new_op(op_id)
        with self.ctx.db.tx() as conn:
            base = self.ctx.vvol(conn, ref)
            snap = self.ctx.vvol(conn, to)
        with self.ctx.locks.hold([base.id, snap.id]):
            with self.ctx.db.tx() as conn:
                base = self.vvols._writable(conn, ref, "revert it", generation)
                snap = self.ctx.ready(self.ctx.vvol(conn, to))
                ensure_unbound(conn, base, "revert it")
                if snap.parent != base.id or not snap.is_snapshot:
                    raise InvalidInput(detail=f"{to!r} is not a snapshot of vvol {ref!r}")
                vvolrepo.change(conn, base, bump=False, state=REVERTING, op=op)
                args = {"to": snap.id}
                self.ctx.journal(conn, op, "revert", base.id, args)
            entry = JournalEntry(
                id=op, op="revert", vvol=base.id, step="begin", args=args, created=0
            )
            backend = self.ctx.backend(base.array)
            try:
                with self.ctx.undo_on_error(lambda: undo_revert(self.ctx, entry), entry.id):
                    # The array stages the snapshot's data as the base's next data
                    # (dir: a copy beside it; rbd: a clone of the snapshot) ...
                    backend.revert(base.id, snap.id, op, self.ctx.progress.callback(op))
                    self.ctx.fault("revert", "staged")
                    # ... from here on the revert is finished, also by recovery.
                    self.ctx.step(op, "revert", "committed")
            finally:
                self.ctx.progress.drop(op)
            finish_revert(self.ctx, JournalEntry(**{**entry.__dict__, "step": "committed"}))
            self.vvols.space.refresh_family_soon(base.id)  # diff walks: after the answer
            return self.vvols.show(base.id)


def _snapshot_row(base: Vvol, c: Container, name: str | None, op: str, cost: int) -> Vvol:
    """The catalog row of a new (creating) read-only snapshot of ``base``, charged
    ``cost`` (its first unique bytes: nothing where the array shares data)."""
    return new_vvol(
        container=c,
        array_id=base.array,
        size=base.size,
        type=base.type,
        name=name,
        metadata={},
        parent=base.id,
        relation=SNAPSHOT,
        readonly=True,
        op=op,
        datastore=base.datastore,
        tenant=base.tenant,
        charge=cost,
        held=cost,
    )


def _renamed(v: Vvol, name: str) -> Vvol:
    return Vvol(**{**v.__dict__, "name": name})


def undo_revert(ctx: Context, entry: JournalEntry) -> None:
    """Before the commit point: the base was never touched; drop what was staged."""
    with ctx.db.tx() as conn:
        base = vvolrepo.get(conn, entry.vvol or "")
    if base is not None:
        ctx.backend(base.array).revert_undo(base.id, entry.id)
    _settle(ctx, entry, base, bump=False)


def finish_revert(ctx: Context, entry: JournalEntry) -> None:
    """After the commit point: swap the staged data in (idempotent), then tidy up."""
    with ctx.db.tx() as conn:
        base = vvolrepo.get(conn, entry.vvol or "")
    if base is not None:
        backend = ctx.backend(base.array)
        backend.revert_commit(base.id, entry.id, entry.args.get("to"))
        ctx.fault("revert", "replaced")
        locator = backend.locator(base.id)
        with ctx.db.tx() as conn:  # one transaction: size, locator, ready, journal closed
            snap = vvolrepo.get(conn, entry.args["to"])
            if snap is not None and base.size != snap.size:
                grown = 0 if thin(base.relation) else snap.size - base.size
                repo.adjust_provisioned(conn, base.container, grown)
                vvolrepo.force(conn, base.id, size=snap.size, charge=base.charge + grown)
            vvolrepo.force(
                conn, base.id, locator=locator, state=READY, op=None, generation=base.generation + 1
            )
            repo.journal_remove(conn, entry.id, outcome="finished")
        return
    _settle(ctx, entry, base, bump=True)


def _settle(ctx: Context, entry: JournalEntry, base: Vvol | None, bump: bool) -> None:
    with ctx.db.tx() as conn:
        if base is not None:
            gen = base.generation + (1 if bump else 0)
            vvolrepo.force(conn, base.id, state=READY, op=None, generation=gen)
        repo.journal_remove(conn, entry.id, outcome="finished" if bump else "rolled back")
