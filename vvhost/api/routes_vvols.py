"""Routes for vvols and datastores.  A host sees and touches only its tenant's
vvols; anything else answers 404, as if it did not exist.  A host's references
are resolved inside its tenant to ids before the operation runs, and what it is
shown carries no array filesystem path nor image name (:func:`_view`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ..model import Principal
from ..service import Service
from ..service.datastores import ADMIN_VIEW
from . import models as m
from .deps import Caller, Generation, OptRef, Ref, Svc
from .paging import BY_CREATION, Cursor, Limit, page, page_of
from .schemas import vvols as v
from .schemas.common import ERRORS, Page

router = APIRouter(prefix="/v1", responses=ERRORS)
BYTES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the bytes read",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _pool(svc: Service, p: Principal, container: str | None, datastore: str | None) -> None:
    """May ``p`` carve vvols from this container / datastore?"""
    with svc.ctx.db.tx() as conn:
        if container:
            c = svc.containers.get(conn, container)
            svc.authz.shared_pool(p, c.tenant, "container", container)
        if datastore:
            ds = svc.datastores.get(conn, datastore)
            svc.authz.shared_pool(p, ds.tenant, "datastore", datastore)


def _view(p: Principal, out: Any) -> Any:
    """What ``p`` is shown: a host never sees where an array keeps a vvol."""
    if p.is_admin:
        return out
    if isinstance(out, list):
        return [_view(p, item) for item in out]
    if isinstance(out, dict):
        return {k: v for k, v in out.items() if k not in ("path", "where", "locator")}
    return out


# -- vvols ----------------------------------------------------------------------------------
@router.get("/vvols", response_model=Page[v.VvolOut], response_model_exclude_unset=True)
def vvols(
    svc: Svc,
    p: Caller,
    container: OptRef = None,
    datastore: OptRef = None,
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> dict[str, Any]:
    if not p.is_admin and p.tenant is None:
        return page([], BY_CREATION, limit, cursor)
    _pool(svc, p, container, datastore)
    tenant = None if p.is_admin else p.tenant

    def fetch(after: Any, n: int) -> list[dict[str, Any]]:
        return svc.vvols.listing(container, datastore, tenant, after=after, limit=n)

    return page_of(fetch, BY_CREATION, (0.0, ""), limit, cursor)


@router.post(
    "/vvols", status_code=201, response_model=v.VvolDetail, response_model_exclude_unset=True
)
def vvol_create(svc: Svc, p: Caller, body: m.VvolCreate) -> dict[str, Any]:
    svc.authz.creator(p, "vvols")
    _pool(svc, p, body.container, body.datastore)
    tenant = body.tenant if p.is_admin else p.tenant
    op_id = svc.authz.claim_op(p, body.op_id)
    out = svc.vvols.create(
        body.container,
        body.size,
        body.type,
        body.name,
        body.metadata,
        op_id,
        datastore=body.datastore,
        tenant=tenant,
        pe=body.pe,
    )
    return _view(p, out)


@router.get("/vvols/{ref}", response_model=v.VvolDetail, response_model_exclude_unset=True)
def vvol_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    return _view(p, svc.vvols.show(svc.authz.vvol(p, ref)))


@router.delete("/vvols/{ref}", status_code=204, response_model=None)
def vvol_delete(
    svc: Svc, p: Caller, ref: Ref, generation: Generation = None, deferred: bool = False
) -> None:
    vid = svc.authz.vvol(p, ref)
    svc.vvols.delete(vid, generation, deferred, op_id=svc.authz.claim_op(p, None))


@router.post("/vvols/{ref}/extend", response_model=v.VvolDetail, response_model_exclude_unset=True)
def vvol_extend(svc: Svc, p: Caller, ref: Ref, body: m.Extend) -> dict[str, Any]:
    vid = svc.authz.vvol(p, ref)
    op_id = svc.authz.claim_op(p, None)
    return _view(p, svc.vvols.extend(vid, body.size, body.generation, op_id))


@router.post("/vvols/{ref}/meta", response_model=v.VvolDetail, response_model_exclude_unset=True)
def vvol_meta(svc: Svc, p: Caller, ref: Ref, body: m.Meta) -> dict[str, Any]:
    return _view(p, svc.vvols.set_meta(svc.authz.vvol(p, ref), body.pairs, body.generation))


@router.post(
    "/vvols/{ref}/snapshot",
    status_code=201,
    response_model=v.VvolDetail,
    response_model_exclude_unset=True,
)
def vvol_snapshot(svc: Svc, p: Caller, ref: Ref, body: m.Snapshot) -> dict[str, Any]:
    vid = svc.authz.vvol(p, ref)
    op_id = svc.authz.claim_op(p, body.op_id)
    return _view(p, svc.cow.snapshot(vid, body.name, op_id))


@router.post(
    "/snapshot-groups/prepare",
    status_code=201,
    response_model=list[v.SnapshotPrepared],
    response_model_exclude_unset=True,
)
def snapshot_prepare(svc: Svc, p: Caller, body: m.SnapshotGroup) -> list[dict[str, Any]]:
    refs = svc.authz.vvols(p, list(body.vvols))
    return _view(p, svc.cow.prepare_group(refs, list(body.names)))


@router.post(
    "/snapshot-groups/cut", response_model=list[v.SnapshotCut], response_model_exclude_unset=True
)
def snapshot_cut(svc: Svc, p: Caller, body: m.SnapshotIds) -> list[dict[str, Any]]:
    return _view(p, svc.cow.cut_group(svc.authz.vvols(p, list(body.snapshots))))


@router.post(
    "/snapshot-groups/commit", response_model=list[v.VvolDetail], response_model_exclude_unset=True
)
def snapshot_commit(svc: Svc, p: Caller, body: m.SnapshotIds) -> list[dict[str, Any]]:
    return _view(p, svc.cow.commit_group(svc.authz.vvols(p, list(body.snapshots))))


@router.post("/snapshot-groups/abort", status_code=204, response_model=None)
def snapshot_abort(svc: Svc, p: Caller, body: m.SnapshotIds) -> None:
    svc.cow.abort_group(svc.authz.vvols(p, list(body.snapshots)))


@router.post(
    "/vvols/{ref}/clone",
    status_code=201,
    response_model=v.VvolDetail,
    response_model_exclude_unset=True,
)
def vvol_clone(svc: Svc, p: Caller, ref: Ref, body: m.Clone) -> dict[str, Any]:
    vid = svc.authz.vvol(p, ref)
    svc.authz.creator(p, "clones")
    _pool(svc, p, body.container, None)
    op_id = svc.authz.claim_op(p, body.op_id)
    out = svc.cow.clone(
        vid,
        body.linked,
        body.container,
        body.name,
        op_id,
        tenant=None if p.is_admin else p.tenant,
    )
    return _view(p, out)


@router.post("/vvols/{ref}/revert", response_model=v.VvolDetail, response_model_exclude_unset=True)
def vvol_revert(svc: Svc, p: Caller, ref: Ref, body: m.Revert) -> dict[str, Any]:
    vid, to = svc.authz.vvols(p, [ref, body.to])
    op_id = svc.authz.claim_op(p, body.op_id)
    return _view(p, svc.cow.revert(vid, to, body.generation, op_id))


@router.post("/vvols/{ref}/move", response_model=v.VvolDetail, response_model_exclude_unset=True)
def vvol_move(svc: Svc, p: Caller, ref: Ref, body: m.Move) -> dict[str, Any]:
    vid = svc.authz.vvol(p, ref)
    _pool(svc, p, body.container, None)
    op_id = svc.authz.claim_op(p, body.op_id)
    return _view(p, svc.data.move(vid, body.container, op_id))


@router.get("/vvols/{ref}/bitmap", response_model=v.BitmapOut, response_model_exclude_unset=True)
def vvol_bitmap(
    svc: Svc,
    p: Caller,
    ref: Ref,
    base: OptRef = None,
    chunk: Annotated[str | None, Query(max_length=64)] = None,
    method: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, Any]:
    vid = svc.authz.vvol(p, ref)
    base_id = svc.authz.vvol(p, base) if base else None
    return _view(p, svc.data.bitmap(vid, base_id, chunk, method))


@router.get("/vvols/{ref}/data", response_model=None, response_class=Response, responses=BYTES)
def vvol_read(
    svc: Svc,
    p: Caller,
    ref: Ref,
    offset: Annotated[int, Query(ge=0)] = 0,
    length: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    vid = svc.authz.vvol(p, ref)
    return Response(svc.data.read(vid, offset, length), media_type="application/octet-stream")


@router.put("/vvols/{ref}/data", response_model=v.WriteOut, response_model_exclude_unset=True)
async def vvol_write(
    svc: Svc,
    p: Caller,
    ref: Ref,
    request: Request,
    offset: Annotated[int, Query(ge=0)] = 0,
    zero: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    vid = svc.authz.vvol(p, ref)
    body = await request.body()
    return await run_in_threadpool(svc.data.write, vid, offset, body, zero)


@router.post(
    "/vvols/{ref}/copy-diffs", response_model=v.CopyDiffsOut, response_model_exclude_unset=True
)
def vvol_copy_diffs(svc: Svc, p: Caller, ref: Ref, body: m.CopyDiffs) -> dict[str, Any]:
    vid, base, to = svc.authz.vvols(p, [ref, body.base, body.to])
    op_id = svc.authz.claim_op(p, body.op_id)
    return _view(p, svc.data.copy_diffs(vid, base, to, op_id))


@router.put("/vvols/{ref}/config", response_model=v.ConfigStored, response_model_exclude_unset=True)
def vvol_config_put(svc: Svc, p: Caller, ref: Ref, body: m.ConfigDocument) -> dict[str, Any]:
    return svc.configs.put(svc.authz.vvol(p, ref), body.document, body.generation)


@router.get("/vvols/{ref}/config", response_model=v.ConfigOut, response_model_exclude_unset=True)
def vvol_config_get(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    return svc.configs.get(svc.authz.vvol(p, ref))


# -- datastores -----------------------------------------------------------------------------
def _visible_datastore(svc: Service, p: Principal, ref: str) -> None:
    with svc.ctx.db.tx() as conn:
        ds = svc.datastores.get(conn, ref)
    svc.authz.shared_pool(p, ds.tenant, "datastore", ref)


def _viewer(p: Principal) -> Any:
    """Whose vvols a datastore's figures count: all for an admin, else the caller's tenant."""
    return ADMIN_VIEW if p.is_admin else p.tenant


@router.get("/datastores", response_model=Page[v.DatastoreOut], response_model_exclude_unset=True)
def datastores(svc: Svc, p: Caller, limit: Limit = 1000, cursor: Cursor = None) -> dict[str, Any]:
    rows = svc.datastores.listing(viewer=_viewer(p))
    mine = [d for d in rows if p.is_admin or d["tenant"] in (None, p.tenant)]
    return page(mine, BY_CREATION, limit, cursor)


@router.post(
    "/datastores", status_code=201, response_model=v.DatastoreOut, response_model_exclude_unset=True
)
def datastore_create(svc: Svc, p: Caller, body: m.DatastoreCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.datastores.create(body.name, body.capacity, body.containers, body.tenant)


@router.get("/datastores/{ref}", response_model=v.DatastoreOut, response_model_exclude_unset=True)
def datastore_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    _visible_datastore(svc, p, ref)
    return svc.datastores.show(ref, viewer=_viewer(p))


@router.post(
    "/datastores/{ref}/extend", response_model=v.DatastoreOut, response_model_exclude_unset=True
)
def datastore_extend(svc: Svc, p: Caller, ref: Ref, body: m.DatastoreExtend) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.datastores.extend(ref, body.capacity)


@router.delete("/datastores/{ref}", status_code=204, response_model=None)
def datastore_delete(svc: Svc, p: Caller, ref: Ref) -> None:
    svc.authz.admin(p)
    svc.datastores.delete(ref)


@router.get(
    "/datastores/{ref}/resolve",
    response_model=v.DatastoreResolved,
    response_model_exclude_unset=True,
)
def datastore_resolve(svc: Svc, p: Caller, ref: Ref, host: OptRef = None) -> dict[str, Any]:
    name = host or p.name
    svc.authz.host(p, name)
    _visible_datastore(svc, p, ref)
    return svc.datastores.resolve(ref, name, paths=p.is_admin)
