"""vvol lifecycle: create, show, list, extend, metadata, delete.

Each multi-step operation journals its intent in the same transaction that
marks the vvol busy; ``undo_*``/``finish_*`` functions are what both the error
path and crash recovery run, so the two can never disagree.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import Connection

from ..arrays import ArrayBackend
from ..arrays.sources import FileSource
from ..catalog import bindrepo, repo, tenancy, vvolrepo
from ..errors import (
    BackendError,
    HasDependants,
    InUse,
    InvalidInput,
    NotFound,
    ReadOnly,
    VvhostError,
)
from ..model import (
    CREATING,
    DEFERRED,
    DELETING,
    EXTENDING,
    FAILED,
    READY,
    SNAPSHOT,
    VVOL_TYPES,
    Container,
    JournalEntry,
    Pe,
    Vvol,
)
from ..spacemodel import thin
from ..units import check_name, parse_size
from . import openers
from .bindings import ensure_unbound
from .context import Context
from .datastores import DatastoreOps, check_datastore_room, check_serving
from .endpoints import EndpointManager, RefreshFailed
from .inventory import ContainerOps
from .space import SpaceOps


def parse_meta(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(detail=f"metadata {pair!r} is not KEY=VALUE")
        check_name(key, what="metadata key")
        if len(value) > 4096 or any(ord(ch) < 32 for ch in value):
            raise InvalidInput(
                detail=f"metadata value for {key!r} is too long or has control characters"
            )
        out[key] = value
    return out


def new_vvol(
    *,
    container: Container,
    array_id: str,
    size: int,
    type: str,
    name: str | None,
    metadata: dict[str, str],
    parent: str | None = None,
    relation: str | None = None,
    readonly: bool = False,
    op: str,
    datastore: str | None = None,
    tenant: str | None = None,
    charge: int = 0,
    held: int = 0,
) -> Vvol:
    """A row for a vvol being made, with what admission charged for it."""
    return Vvol(
        id=str(uuid.uuid4()),
        name=name,
        type=type,
        container=container.id,
        array=array_id,
        size=size,
        parent=parent,
        relation=relation,
        readonly=readonly,
        state=CREATING,
        op=op,
        generation=1,
        refs=0,
        created=time.time(),
        metadata=metadata,
        datastore=datastore,
        tenant=tenant,
        charge=charge,
        held=held,
    )


class VvolOps:
    def __init__(self, ctx: Context, containers: ContainerOps, datastores: DatastoreOps) -> None:
        self.ctx = ctx
        self.containers = containers
        self.datastores = datastores
        # the daemons behind the bindings; without them a bound vvol cannot grow
        self.endpoints: EndpointManager | None = None
        self.space = SpaceOps(ctx)

    # -- reading ------------------------------------------------------------------------
    def describe(self, conn: Connection, v: Vvol) -> dict[str, Any]:
        deps = vvolrepo.dependants(conn, v.id) if v.refs else []
        c = repo.get_container(conn, v.container)
        a = repo.get_array(conn, v.array)
        backend = self.ctx.backend(v.array)
        offline = backend.offline()
        problem = f"array {backend.name} is offline: {offline}" if offline else None
        there = problem is None and v.state != CREATING and backend.exists(v.id)
        if problem is None and v.state != CREATING and not there:
            problem = "its data is missing from the array"
        return {
            "id": v.id,
            "name": v.name,
            "type": v.type,
            "container": c.name if c else v.container,
            "container_id": v.container,
            "array": a.name if a else v.array,
            "array_id": v.array,
            "size": v.size,
            "used": _used(backend, v),
            **_space(v),
            "parent": v.parent,
            "relation": v.relation,
            "readonly": v.readonly,
            "snapshots": [d.id for d in deps if d.relation == SNAPSHOT],
            "children": [d.id for d in deps if d.relation != SNAPSHOT],
            "refs": v.refs,
            "state": v.state,
            "op": v.op,
            "generation": v.generation,
            "metadata": v.metadata,
            "datastore": v.datastore,
            "tenant": v.tenant,
            "created": v.created,
            **_where(backend, v, there),
            "locator": v.locator,
            "failure": v.failure,
            "problem": problem,
            "background": backend.background(v.id) if offline is None else None,
        }

    def show(self, ref: str) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            return self.describe(conn, self.ctx.vvol(conn, ref))

    def listing(
        self,
        container: str | None = None,
        datastore: str | None = None,
        tenant: str | None = None,
        *,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Vvols oldest first; with ``after`` / ``limit``, one page of them (the
        database pages: a page costs the same whatever the catalog holds)."""
        with self.ctx.db.tx() as conn:
            cid = self.containers.get(conn, container).id if container else None
            dsid = self.datastores.get(conn, datastore).id if datastore else None
            rows = vvolrepo.listing(conn, cid, dsid, tenant, after=after, limit=limit)
            names = {c.id: c.name for c in repo.list_containers(conn)}
        return [
            {
                "id": v.id,
                "name": v.name,
                "type": v.type,
                "container": names.get(v.container),
                "size": v.size,
                "parent": v.parent,
                "relation": v.relation,
                "readonly": v.readonly,
                "state": v.state,
                "failure": v.failure,
                "generation": v.generation,
                "datastore": v.datastore,
                "tenant": v.tenant,
                "created": v.created,
                **_space(v),
            }
            for v in rows
        ]

    # -- placement ----------------------------------------------------------------------
    def place(self, c: Container, prefer: str | None = None, among: list[str] | None = None) -> str:
        """Prefer ``prefer`` (the source's array: reflink is possible there), else the
        container's array with the most free space (of those in ``among``, if given:
        the arrays an endpoint can serve)."""
        if prefer and prefer in c.arrays:
            self.ctx.backend(prefer).check()
            return prefer
        free: list[tuple[int, str]] = []
        refused: BackendError | None = None
        candidates = [a for a in c.arrays if among is None or a in among]
        for array_id in candidates:  # an offline or broken array takes nothing new
            try:
                free.append((self.ctx.backend(array_id).free_bytes(), array_id))
            except BackendError as exc:
                refused = refused or exc
        if not free:
            assert refused is not None
            raise refused
        return max(free)[1]

    @staticmethod
    def _endpoint(conn: Connection, ref: str) -> Pe:
        found = bindrepo.get_pe(conn, ref)
        if found is None:
            raise NotFound(kind="endpoint", ref=ref)
        return found

    # -- create -------------------------------------------------------------------------
    def create(
        self,
        container: str | None,
        size: str | int,
        type: str = "data",
        name: str | None = None,
        metadata: dict[str, str] | None = None,
        op_id: str | None = None,
        datastore: str | None = None,
        tenant: str | None = None,
        pe: str | None = None,
    ) -> dict[str, Any]:
        """Create a vvol in ``container``, or in ``datastore`` (placed by its rule);
        ``tenant`` owns it (default: the datastore's or the container's). With
        ``pe``, only on an array that endpoint can serve (a VM's disks all go
        through one endpoint), else refused before anything is made."""
        if type not in VVOL_TYPES:
            raise InvalidInput(detail=f"vvol type {type!r} is not one of {', '.join(VVOL_TYPES)}")
        if name is not None:
            check_name(name, what="vvol name")
        nbytes = parse_size(size)
        meta = parse_meta([f"{k}={v}" for k, v in (metadata or {}).items()])
        op = self.ctx.new_op(op_id)
        if container is None and datastore is None:
            raise InvalidInput(detail="say where: --container or --datastore")
        with self.ctx.db.tx() as conn:
            if tenant is not None and tenancy.get_tenant(conn, tenant) is None:
                raise NotFound(kind="tenant", ref=tenant)
            ds_id = None
            endpoint = self._endpoint(conn, pe) if pe is not None else None
            if datastore is not None:
                ds, c = self.datastores.place(conn, datastore, container, nbytes, endpoint)
                ds_id, owner = ds.id, ds.tenant
            else:
                assert container is not None
                c = self.containers.get(conn, container)
                owner = c.tenant
            if tenant is not None and owner not in (None, tenant):
                raise InvalidInput(detail=f"tenant {tenant} may not own a vvol in {owner}'s pool")
            among = check_serving(conn, endpoint, c) if endpoint is not None else None
            array_id = self.place(c, among=among)
            self.space.admit(conn, c, nbytes, 0, "create")
            v = new_vvol(
                container=c,
                array_id=array_id,
                size=nbytes,
                type=type,
                name=name,
                metadata=meta,
                op=op,
                datastore=ds_id,
                tenant=tenant or owner,
                charge=nbytes,
            )
            vvolrepo.insert(conn, v)
            self.ctx.journal(conn, op, "create", v.id, {})
        entry = JournalEntry(id=op, op="create", vvol=v.id, step="begin", args={}, created=0)
        with self.ctx.undo_on_error(lambda: undo_new(self.ctx, entry), op):
            backend = self.ctx.backend(array_id)
            backend.create(v.id, nbytes, v.container)
            self.ctx.fault("create", "file-created")
            with self.ctx.db.tx() as conn:
                vvolrepo.force(conn, v.id, state=READY, op=None, locator=backend.locator(v.id))
                repo.journal_remove(conn, op)
                return self.describe(conn, vvolrepo.get(conn, v.id) or v)

    # -- extend -------------------------------------------------------------------------
    def extend(
        self, ref: str, size: str | int, generation: int | None = None, op_id: str | None = None
    ) -> dict[str, Any]:
        """Grow a vvol, bound or not: the data grows (journaled: recovery finishes it),
        then every endpoint presenting a binding of it shows the new size.

        Extending to the size it has already only refreshes the endpoints: the way
        to retry after an endpoint failed (the vvol itself had grown by then).
        """
        nbytes = parse_size(size)
        op = self.ctx.new_op(op_id)
        endpoints = self.endpoints
        with self.ctx.db.tx() as conn:
            v = self.ctx.vvol(conn, ref)
        with self.ctx.locks.hold([v.id]):
            with self.ctx.db.tx() as conn:
                v = self._writable(conn, ref, "extend it", generation)
                if nbytes < v.size:
                    raise InvalidInput(
                        detail=f"vvol {ref!r} is {v.size} bytes; shrinking is not supported"
                    )
                grow = nbytes > v.size
                if grow and endpoints is None:  # nobody could show bound hosts the new size
                    ensure_unbound(conn, v, "extend it")
                if grow:
                    c = self.containers.get(conn, v.container)
                    check_datastore_room(conn, v.datastore, nbytes - v.size)
                    grown = 0 if thin(v.relation) else nbytes - v.size  # thin: unique bytes
                    self.space.admit(conn, c, grown, 0, "extend")
                    vvolrepo.change(
                        conn, v, bump=False, state=EXTENDING, op=op, charge=v.charge + grown
                    )
                    self.ctx.journal(conn, op, "extend", v.id, {"size": nbytes})
            if grow:
                self.ctx.fault("extend", "begin")
                finish_extend(
                    self.ctx,
                    JournalEntry(
                        id=op,
                        op="extend",
                        vvol=v.id,
                        step="begin",
                        args={"size": nbytes},
                        created=0,
                    ),
                )
                self.ctx.fault("extend", "resized")
                self.space.refresh_family(v.id)
            if endpoints is not None:
                refresh_endpoints(endpoints, v, nbytes)
            return self.show(v.id)

    def _writable(self, conn: Connection, ref: str, action: str, generation: int | None) -> Vvol:
        v = self.ctx.ready(self.ctx.vvol(conn, ref))
        if v.readonly:
            raise ReadOnly(ref=v.name or v.id, action=action)
        self.ctx.expect(v, generation)
        self.ctx.source(v)  # its array is online and its data there
        return v

    # -- metadata -----------------------------------------------------------------------
    def set_meta(self, ref: str, pairs: list[str], generation: int | None = None) -> dict[str, Any]:
        updates = parse_meta(pairs)
        with self.ctx.db.tx() as conn:
            v = self.ctx.vvol(conn, ref)
        with self.ctx.locks.hold([v.id]):
            with self.ctx.db.tx() as conn:
                v = self.ctx.ready(self.ctx.vvol(conn, ref))
                self.ctx.expect(v, generation)
                meta = {**v.metadata, **updates}
                meta = {k: val for k, val in meta.items() if val != ""}
                vvolrepo.change(conn, v, metadata=meta)
                return self.describe(conn, vvolrepo.get(conn, v.id) or v)

    # -- delete -------------------------------------------------------------------------
    def delete(
        self,
        ref: str,
        generation: int | None = None,
        deferred: bool = False,
        op_id: str | None = None,
    ) -> str:
        """Delete a vvol; ``deferred``: one that snapshots or linked clones still need
        leaves listings now and goes (with its space) when the last of them goes.
        Returns ``deleted`` or ``deferred``."""
        op = self.ctx.new_op(op_id)
        with self.ctx.db.tx() as conn:
            v = self.ctx.vvol(conn, ref)
        with self.ctx.locks.hold([v.id, v.parent]):
            with self.ctx.db.tx() as conn:
                v = self.ctx.vvol(conn, ref)
                if v.state != FAILED:  # a failed vvol can always be deleted
                    self.ctx.ready(v)
                self.ctx.expect(v, generation)
                self.ctx.backend(v.array).check()  # never forget data we cannot remove
                ensure_unbound(conn, v, "delete it")
                deps = vvolrepo.dependants(conn, v.id)
                if deps and deferred:
                    vvolrepo.change(conn, v, state=DEFERRED, op=None)
                    return DEFERRED
                if deps:
                    snaps = sum(1 for d in deps if d.relation == SNAPSHOT)
                    what = (
                        "snapshots"
                        if snaps == len(deps)
                        else "linked clones"
                        if snaps == 0
                        else "snapshots and linked clones"
                    )
                    raise HasDependants(
                        kind="vvol",
                        ref=v.name or v.id,
                        what=what,
                        names=", ".join(d.name or d.id for d in deps),
                    )
            self._refuse_open(v)  # outside the transaction: it asks the array
            with self.ctx.db.tx() as conn:
                v = self.ctx.vvol(conn, ref)
                vvolrepo.change(conn, v, bump=False, state=DELETING, op=op)
                self.ctx.journal(conn, op, "delete", v.id, {})
            self.ctx.fault("delete", "begin")
            finish_delete(
                self.ctx,
                JournalEntry(id=op, op="delete", vvol=v.id, step="begin", args={}, created=0),
            )
        self.space.refresh_family(v.parent)
        return "deleted"

    def _refuse_open(self, v: Vvol) -> None:
        """Refuse to delete data a client still has open, naming it (once, at once)."""
        if v.state == FAILED and not self.ctx.backend(v.array).exists(v.id):
            return
        busy = openers.who(self.ctx, self.endpoints, v)
        if busy:
            raise InUse(
                kind="vvol",
                ref=v.name or v.id,
                reason=f"its data is open by {'; '.join(busy)}; close it there, then delete",
            )


# -- shared by the error path and crash recovery --------------------------------------------


def undo_new(ctx: Context, entry: JournalEntry) -> None:
    """Roll back a vvol that was being created (create, snapshot, clone): no file, no row."""
    with ctx.db.tx() as conn:
        v = vvolrepo.get(conn, entry.vvol or "")
    if v is not None:
        ctx.backend(v.array).remove(v.id)
    with ctx.db.tx() as conn:
        v = vvolrepo.get(conn, entry.vvol or "")
        if v is not None:
            vvolrepo.add_ref(conn, v.parent, -1)
            repo.reserve(conn, v.container, -v.charge)
            vvolrepo.remove(conn, v.id)
        repo.journal_remove(conn, entry.id, outcome="rolled back")


def finish_delete(ctx: Context, entry: JournalEntry) -> None:
    """Remove the data, then the row; a parent deleted with ``--deferred`` that
    nothing needs any more goes next (journaled in the same transaction)."""
    while True:
        with ctx.db.tx() as conn:
            v = vvolrepo.get(conn, entry.vvol or "")
        if v is not None:
            ctx.backend(v.array).remove(v.id)
            ctx.fault("delete", "file-removed")
        follow: JournalEntry | None = None
        with ctx.db.tx() as conn:
            v = vvolrepo.get(conn, entry.vvol or "")
            if v is not None:
                vvolrepo.add_ref(conn, v.parent, -1)
                repo.reserve(conn, v.container, -v.charge)
                vvolrepo.remove(conn, v.id)
                bindrepo.drop_hints(conn, v.id)
                follow = _deferred_next(ctx, conn, v.parent)
            repo.journal_remove(conn, entry.id)
        if follow is None:
            return
        entry = follow


def _deferred_next(ctx: Context, conn: Connection, parent_id: str | None) -> JournalEntry | None:
    """The journaled delete of ``parent_id`` if it waits (deferred) for no one now."""
    parent = vvolrepo.get(conn, parent_id) if parent_id else None
    if parent is None or parent.state != DEFERRED or parent.refs > 0:
        return None
    op = ctx.new_op()
    vvolrepo.force(conn, parent.id, state=DELETING, op=op)
    ctx.journal(conn, op, "delete", parent.id, {})
    return JournalEntry(id=op, op="delete", vvol=parent.id, step="begin", args={}, created=0)


def refresh_endpoints(endpoints: EndpointManager, v: Vvol, size: int) -> None:
    """After ``v`` grew to ``size``: its bindings' endpoints show the new size, or
    one error says which still do not (growing is harmless: nothing is undone)."""
    bindings, failures = endpoints.refresh(v.id)
    if failures:
        raise RefreshFailed(
            ref=v.name or v.id,
            size=size,
            failed=len(failures),
            bindings=bindings,
            details="; ".join(failures),
        )


def finish_extend(ctx: Context, entry: JournalEntry) -> None:
    size = int(entry.args["size"])
    with ctx.db.tx() as conn:
        v = vvolrepo.get(conn, entry.vvol or "")
    if v is not None:
        ctx.backend(v.array).resize(v.id, size)
        with ctx.db.tx() as conn:
            vvolrepo.force(conn, v.id, size=size, state=READY, op=None, generation=v.generation + 1)
    with ctx.db.tx() as conn:
        repo.journal_remove(conn, entry.id)


def _where(backend: ArrayBackend, v: Vvol, there: bool) -> dict[str, Any]:
    """Where the data lives: ``where`` (a file path or ``pool/namespace/image@snap``),
    ``path`` too for files; nothing while the array cannot be asked (``there``: it
    is online and holds the vvol's data, as ``describe`` just found)."""
    if not there:
        return {"where": None, "path": None}
    try:
        source = backend.source(v.id)
    except VvhostError:
        return {"where": None, "path": None}
    return {
        "where": source.label(),
        "path": source.path if isinstance(source, FileSource) else None,
    }


def _space(v: Vvol) -> dict[str, Any]:
    """The figures the catalog keeps (see spacemodel.py): ``provisioned`` (its size),
    ``allocated``, ``unique`` (None: the array cannot tell), and what it is charged
    against its container's limit (``charge``) and physical capacity (``held``)."""
    return {
        "provisioned": v.size,
        "allocated": v.allocated,
        "unique": v.unique,
        "charge": v.charge,
        "held": v.held,
    }


def _used(backend: ArrayBackend, v: Vvol) -> int:
    """Bytes the array allocated for the vvol (0 while it is being made or cannot be asked)."""
    if v.state == CREATING:
        return 0
    try:
        return backend.allocated(v.id)
    except VvhostError:
        return 0
