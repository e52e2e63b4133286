"""Routes for vvols and datastores.  A host sees and touches only its tenant's
vvols; anything else answers 404, as if it did not exist."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..model import Principal
from ..service import Service
from . import models as m
from .deps import Caller, OptRef, Ref, Svc

router = APIRouter(prefix="/v1")


def _pool(svc: Service, p: Principal, container: str | None, datastore: str | None) -> None:
    """May ``p`` carve vvols from this container / datastore?"""
    with svc.ctx.db.tx() as conn:
        if container:
            c = svc.containers.get(conn, container)
            svc.authz.shared_pool(p, c.tenant, "container", container)
        if datastore:
            ds = svc.datastores.get(conn, datastore)
            svc.authz.shared_pool(p, ds.tenant, "datastore", datastore)


# -- vvols ----------------------------------------------------------------------------------
@router.get("/vvols", response_model=None)
def vvols(
    svc: Svc, p: Caller, container: OptRef = None, datastore: OptRef = None
) -> list[dict[str, Any]]:
    if not p.is_admin and p.tenant is None:
        return []
    _pool(svc, p, container, datastore)
    return svc.vvols.listing(container, datastore, None if p.is_admin else p.tenant)


@router.post("/vvols", status_code=201, response_model=None)
def vvol_create(svc: Svc, p: Caller, body: m.VvolCreate) -> dict[str, Any]:
    _pool(svc, p, body.container, body.datastore)
    tenant = body.tenant if p.is_admin else p.tenant
    return svc.vvols.create(
        body.container,
        body.size,
        body.type,
        body.name,
        body.metadata,
        body.op_id,
        datastore=body.datastore,
        tenant=tenant,
    )


@router.get("/vvols/{ref}", response_model=None)
def vvol_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    return svc.vvols.show(ref)


@router.delete("/vvols/{ref}", status_code=204, response_model=None)
def vvol_delete(svc: Svc, p: Caller, ref: Ref, generation: int | None = None) -> None:
    svc.authz.vvol(p, ref)
    svc.vvols.delete(ref, generation)


@router.post("/vvols/{ref}/extend", response_model=None)
def vvol_extend(svc: Svc, p: Caller, ref: Ref, body: m.Extend) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    return svc.vvols.extend(ref, body.size, body.generation)


@router.post("/vvols/{ref}/meta", response_model=None)
def vvol_meta(svc: Svc, p: Caller, ref: Ref, body: m.Meta) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    return svc.vvols.set_meta(ref, body.pairs, body.generation)


@router.post("/vvols/{ref}/snapshot", status_code=201, response_model=None)
def vvol_snapshot(svc: Svc, p: Caller, ref: Ref, body: m.Snapshot) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    return svc.cow.snapshot(ref, body.name, body.op_id)


@router.post("/snapshot-groups/prepare", status_code=201, response_model=None)
def snapshot_prepare(svc: Svc, p: Caller, body: m.SnapshotGroup) -> list[dict[str, Any]]:
    for ref in body.vvols:
        svc.authz.vvol(p, ref)
    return svc.cow.prepare_group(list(body.vvols), list(body.names))


@router.post("/snapshot-groups/cut", response_model=None)
def snapshot_cut(svc: Svc, p: Caller, body: m.SnapshotIds) -> list[dict[str, Any]]:
    for ref in body.snapshots:
        svc.authz.vvol(p, ref)
    return svc.cow.cut_group(list(body.snapshots))


@router.post("/snapshot-groups/commit", response_model=None)
def snapshot_commit(svc: Svc, p: Caller, body: m.SnapshotIds) -> list[dict[str, Any]]:
    for ref in body.snapshots:
        svc.authz.vvol(p, ref)
    return svc.cow.commit_group(list(body.snapshots))


@router.post("/snapshot-groups/abort", status_code=204, response_model=None)
def snapshot_abort(svc: Svc, p: Caller, body: m.SnapshotIds) -> None:
    for ref in body.snapshots:
        svc.authz.vvol(p, ref)
    svc.cow.abort_group(list(body.snapshots))


@router.post("/vvols/{ref}/clone", status_code=201, response_model=None)
def vvol_clone(svc: Svc, p: Caller, ref: Ref, body: m.Clone) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    _pool(svc, p, body.container, None)
    return svc.cow.clone(
        ref,
        body.linked,
        body.container,
        body.name,
        body.op_id,
        tenant=None if p.is_admin else p.tenant,
    )


@router.post("/vvols/{ref}/revert", response_model=None)
def vvol_revert(svc: Svc, p: Caller, ref: Ref, body: m.Revert) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    svc.authz.vvol(p, body.to)
    return svc.cow.revert(ref, body.to, body.generation, body.op_id)


@router.post("/vvols/{ref}/move", response_model=None)
def vvol_move(svc: Svc, p: Caller, ref: Ref, body: m.Move) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    _pool(svc, p, body.container, None)
    return svc.data.move(ref, body.container, body.op_id)


@router.get("/vvols/{ref}/bitmap", response_model=None)
def vvol_bitmap(
    svc: Svc,
    p: Caller,
    ref: Ref,
    base: OptRef = None,
    chunk: str | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    if base:
        svc.authz.vvol(p, base)
    return svc.data.bitmap(ref, base, chunk, method)


@router.post("/vvols/{ref}/copy-diffs", response_model=None)
def vvol_copy_diffs(svc: Svc, p: Caller, ref: Ref, body: m.CopyDiffs) -> dict[str, Any]:
    for r in (ref, body.base, body.to):
        svc.authz.vvol(p, r)
    return svc.data.copy_diffs(ref, body.base, body.to, body.op_id)


@router.put("/vvols/{ref}/config", response_model=None)
def vvol_config_put(svc: Svc, p: Caller, ref: Ref, body: m.ConfigDocument) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    return svc.configs.put(ref, body.document, body.generation)


@router.get("/vvols/{ref}/config", response_model=None)
def vvol_config_get(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    return svc.configs.get(ref)


# -- datastores -----------------------------------------------------------------------------
def _visible_datastore(svc: Service, p: Principal, ref: str) -> None:
    with svc.ctx.db.tx() as conn:
        ds = svc.datastores.get(conn, ref)
    svc.authz.shared_pool(p, ds.tenant, "datastore", ref)


@router.get("/datastores", response_model=None)
def datastores(svc: Svc, p: Caller) -> list[dict[str, Any]]:
    rows = svc.datastores.listing()
    return [d for d in rows if p.is_admin or d["tenant"] in (None, p.tenant)]


@router.post("/datastores", status_code=201, response_model=None)
def datastore_create(svc: Svc, p: Caller, body: m.DatastoreCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.datastores.create(body.name, body.capacity, body.containers, body.tenant)


@router.get("/datastores/{ref}", response_model=None)
def datastore_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    _visible_datastore(svc, p, ref)
    return svc.datastores.show(ref)


@router.post("/datastores/{ref}/extend", response_model=None)
def datastore_extend(svc: Svc, p: Caller, ref: Ref, body: m.DatastoreExtend) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.datastores.extend(ref, body.capacity)


@router.delete("/datastores/{ref}", status_code=204, response_model=None)
def datastore_delete(svc: Svc, p: Caller, ref: Ref) -> None:
    svc.authz.admin(p)
    svc.datastores.delete(ref)


@router.get("/datastores/{ref}/resolve", response_model=None)
def datastore_resolve(svc: Svc, p: Caller, ref: Ref, host: OptRef = None) -> dict[str, Any]:
    name = host or p.name
    svc.authz.host(p, name)
    _visible_datastore(svc, p, ref)
    return svc.datastores.resolve(ref, name)
