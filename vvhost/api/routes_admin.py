"""Routes for the admin role: arrays, containers, protocol endpoints, hosts,
tenants, tokens and the audit; plus health and operation progress for everyone."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from .. import __version__
from . import models as m
from .deps import Caller, Ref, Svc
from .paging import BY_CREATION, BY_NAME, Cursor, Limit, fields, page
from .schemas import admin as a
from .schemas import binding as bb
from .schemas import inventory as i
from .schemas.common import ERRORS, Page

router = APIRouter(prefix="/v1", responses=ERRORS)


@router.get("/health", response_model=a.HealthOut, response_model_exclude_unset=True)
def health(svc: Svc, p: Caller) -> dict[str, Any]:
    return {"ok": True, "version": __version__, "recovered": svc.recovered, "caller": p.name}


@router.get("/ops/{op_id}", response_model=a.OperationOut, response_model_exclude_unset=True)
def operation(svc: Svc, p: Caller, op_id: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
    return svc.operation(op_id, p)


@router.get("/audit", response_model=a.AuditOut, response_model_exclude_unset=True)
def audit(svc: Svc, p: Caller) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.audit()


# -- arrays and containers ------------------------------------------------------------------
@router.get("/arrays", response_model=Page[i.ArrayOut], response_model_exclude_unset=True)
def arrays(svc: Svc, p: Caller, limit: Limit = 1000, cursor: Cursor = None) -> dict[str, Any]:
    svc.authz.admin(p)
    return page([x.to_dict() for x in svc.arrays.listing()], BY_CREATION, limit, cursor)


@router.post(
    "/arrays", status_code=201, response_model=i.ArrayOut, response_model_exclude_unset=True
)
def array_add(svc: Svc, p: Caller, body: m.ArrayCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.arrays.add(body.name, body.backend, dict(body.settings)).to_dict()


@router.get("/arrays/{ref}", response_model=i.ArrayDetail, response_model_exclude_unset=True)
def array_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    """An admin sees everything; a host (which decides, say, how to snapshot its VMs)
    sees what the array can do, never how it is reached or where it keeps data."""
    shown = svc.arrays.show(ref)
    if p.is_admin:
        return shown
    hidden = ("settings", "path", "where", "fs_id")
    return {**{k: v for k, v in shown.items() if k not in hidden}, "settings": {}}


@router.delete("/arrays/{ref}", status_code=204, response_model=None)
def array_delete(svc: Svc, p: Caller, ref: Ref) -> None:
    svc.authz.admin(p)
    svc.arrays.delete(ref)


@router.post("/arrays/{ref}/reap", response_model=i.ReapOut, response_model_exclude_unset=True)
def array_reap(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.maintenance.reap(ref)


@router.get("/containers", response_model=Page[i.ContainerOut], response_model_exclude_unset=True)
def containers(svc: Svc, p: Caller, limit: Limit = 1000, cursor: Cursor = None) -> dict[str, Any]:
    svc.authz.admin(p)
    return page([c.to_dict() for c in svc.containers.listing()], BY_CREATION, limit, cursor)


@router.post(
    "/containers", status_code=201, response_model=i.ContainerOut, response_model_exclude_unset=True
)
def container_create(svc: Svc, p: Caller, body: m.ContainerCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.containers.create(
        body.name,
        body.capacity,
        body.arrays,
        body.tenant,
        body.overcommit,
        body.reserve,
        body.alerts,
    ).to_dict()


@router.patch(
    "/containers/{ref}", response_model=i.ContainerDetail, response_model_exclude_unset=True
)
def container_set(svc: Svc, p: Caller, ref: Ref, body: m.ContainerSet) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.containers.set(ref, body.capacity, body.overcommit, body.reserve, body.alerts)


@router.post(
    "/containers/{ref}/refresh", response_model=i.ContainerDetail, response_model_exclude_unset=True
)
def container_refresh(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    """Read every vvol's space figures from the arrays now."""
    svc.authz.admin(p)
    svc.space.refresh_container(ref)
    return svc.containers.show(ref)


@router.get(
    "/containers/{ref}", response_model=i.ContainerDetail, response_model_exclude_unset=True
)
def container_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.containers.show(ref)


@router.delete("/containers/{ref}", status_code=204, response_model=None)
def container_delete(svc: Svc, p: Caller, ref: Ref) -> None:
    svc.authz.admin(p)
    svc.containers.delete(ref)


# -- control-plane replicas -----------------------------------------------------------------
@router.get("/replicas", response_model=Page[a.ReplicaOut], response_model_exclude_unset=True)
def replicas(svc: Svc, p: Caller, limit: Limit = 1000, cursor: Cursor = None) -> dict[str, Any]:
    """The replicas sharing this catalog (none with SQLite: one control plane)."""
    svc.authz.admin(p)
    return page(svc.takeover.replicas(), fields("started", "id"), limit, cursor)


# -- protocol endpoints ---------------------------------------------------------------------
@router.get("/pes", response_model=Page[i.PeOut], response_model_exclude_unset=True)
def pes(svc: Svc, p: Caller, limit: Limit = 1000, cursor: Cursor = None) -> dict[str, Any]:
    svc.authz.admin(p)
    return page(svc.pes.listing(), BY_CREATION, limit, cursor)


@router.post("/pes", status_code=201, response_model=i.PeOut, response_model_exclude_unset=True)
def pe_create(svc: Svc, p: Caller, body: m.PeCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.pes.create(body.name, body.protocol, body.array, body.portal, body.path, body.node)


@router.get("/pes/{ref}", response_model=i.PeOut, response_model_exclude_unset=True)
def pe_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.pes.show(ref)


@router.post(
    "/pes/{ref}/evacuate", response_model=list[bb.BindResult], response_model_exclude_unset=True
)
def pe_evacuate(svc: Svc, p: Caller, ref: Ref, body: m.PeEvacuate) -> list[dict[str, Any]]:
    """Rebind every binding of endpoint ``ref`` to endpoint ``to`` (its node is gone)."""
    svc.authz.admin(p)
    return svc.evacuation.run(ref, body.to)


@router.delete("/pes/{ref}", status_code=204, response_model=None)
def pe_delete(svc: Svc, p: Caller, ref: Ref) -> None:
    svc.authz.admin(p)
    svc.pes.delete(ref)


# -- hosts, tenants, tokens -----------------------------------------------------------------
@router.get("/hosts", response_model=Page[i.HostOut], response_model_exclude_unset=True)
def hosts(svc: Svc, p: Caller, limit: Limit = 1000, cursor: Cursor = None) -> dict[str, Any]:
    svc.authz.admin(p)
    return page(svc.fencing.contacts(), BY_NAME, limit, cursor)


@router.post(
    "/hosts", status_code=201, response_model=i.HostCreated, response_model_exclude_unset=True
)
def host_add(svc: Svc, p: Caller, body: m.HostAdd) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.hosts.add(body.name, body.iqn, body.tenant)


@router.get("/hosts/{name}", response_model=i.HostDetail, response_model_exclude_unset=True)
def host_show(svc: Svc, p: Caller, name: Ref) -> dict[str, Any]:
    svc.authz.host(p, name)
    return {**svc.hosts.show(name), **svc.fencing.contact(name)}


@router.delete("/hosts/{name}", status_code=204, response_model=None)
def host_remove(svc: Svc, p: Caller, name: Ref) -> None:
    svc.authz.admin(p)
    svc.hosts.remove(name)


@router.post("/hosts/{name}/token", response_model=i.TokenOut, response_model_exclude_unset=True)
def host_token_rotate(svc: Svc, p: Caller, name: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.hosts.rotate_token(name)


@router.get("/tenants", response_model=Page[i.TenantOut], response_model_exclude_unset=True)
def tenants(svc: Svc, p: Caller, limit: Limit = 1000, cursor: Cursor = None) -> dict[str, Any]:
    svc.authz.admin(p)
    return page(svc.tenants.listing(), BY_NAME, limit, cursor)


@router.post(
    "/tenants", status_code=201, response_model=i.TenantOut, response_model_exclude_unset=True
)
def tenant_create(svc: Svc, p: Caller, body: m.TenantCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.tenants.create(body.name)


@router.delete("/tenants/{name}", status_code=204, response_model=None)
def tenant_delete(svc: Svc, p: Caller, name: Ref) -> None:
    svc.authz.admin(p)
    svc.tenants.delete(name)


@router.post(
    "/admin-tokens", status_code=201, response_model=i.TokenOut, response_model_exclude_unset=True
)
def admin_token(svc: Svc, p: Caller, body: m.TokenCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.tenants.admin_token(body.name)


@router.get("/admin-tokens", response_model=Page[i.TokenInfo], response_model_exclude_unset=True)
def admin_tokens(svc: Svc, p: Caller, limit: Limit = 1000, cursor: Cursor = None) -> dict[str, Any]:
    svc.authz.admin(p)
    return page(svc.tenants.admin_tokens(), BY_NAME, limit, cursor)


@router.delete(
    "/admin-tokens/{name}", response_model=i.TokenRevoked, response_model_exclude_unset=True
)
def admin_token_revoke(svc: Svc, p: Caller, name: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.tenants.revoke_admin_token(name)
