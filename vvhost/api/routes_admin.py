"""Routes for the admin role: arrays, containers, protocol endpoints, hosts,
tenants, tokens and the audit; plus health and operation progress for everyone."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from .. import __version__
from . import models as m
from .deps import Caller, Ref, Svc

router = APIRouter(prefix="/v1")


@router.get("/health", response_model=None)
def health(svc: Svc, p: Caller) -> dict[str, Any]:
    return {"ok": True, "version": __version__, "recovered": svc.recovered, "caller": p.name}


@router.get("/ops/{op_id}", response_model=None)
def operation(svc: Svc, p: Caller, op_id: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
    return svc.operation(op_id, p)


@router.get("/audit", response_model=None)
def audit(svc: Svc, p: Caller) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.audit()


# -- arrays and containers ------------------------------------------------------------------
@router.get("/arrays", response_model=None)
def arrays(svc: Svc, p: Caller) -> list[dict[str, Any]]:
    svc.authz.admin(p)
    return [a.to_dict() for a in svc.arrays.listing()]


@router.post("/arrays", status_code=201, response_model=None)
def array_add(svc: Svc, p: Caller, body: m.ArrayCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.arrays.add(body.name, body.backend, dict(body.settings)).to_dict()


@router.get("/arrays/{ref}", response_model=None)
def array_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.arrays.show(ref)


@router.delete("/arrays/{ref}", status_code=204, response_model=None)
def array_delete(svc: Svc, p: Caller, ref: Ref) -> None:
    svc.authz.admin(p)
    svc.arrays.delete(ref)


@router.post("/arrays/{ref}/reap", response_model=None)
def array_reap(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.maintenance.reap(ref)


@router.get("/containers", response_model=None)
def containers(svc: Svc, p: Caller) -> list[dict[str, Any]]:
    svc.authz.admin(p)
    return [c.to_dict() for c in svc.containers.listing()]


@router.post("/containers", status_code=201, response_model=None)
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


@router.patch("/containers/{ref}", response_model=None)
def container_set(svc: Svc, p: Caller, ref: Ref, body: m.ContainerSet) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.containers.set(ref, body.capacity, body.overcommit, body.reserve, body.alerts)


@router.post("/containers/{ref}/refresh", response_model=None)
def container_refresh(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    """Read every vvol's space figures from the arrays now."""
    svc.authz.admin(p)
    svc.space.refresh_container(ref)
    return svc.containers.show(ref)


@router.get("/containers/{ref}", response_model=None)
def container_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.containers.show(ref)


@router.delete("/containers/{ref}", status_code=204, response_model=None)
def container_delete(svc: Svc, p: Caller, ref: Ref) -> None:
    svc.authz.admin(p)
    svc.containers.delete(ref)


# -- protocol endpoints ---------------------------------------------------------------------
@router.get("/pes", response_model=None)
def pes(svc: Svc, p: Caller) -> list[dict[str, Any]]:
    svc.authz.admin(p)
    return svc.pes.listing()


@router.post("/pes", status_code=201, response_model=None)
def pe_create(svc: Svc, p: Caller, body: m.PeCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.pes.create(body.name, body.protocol, body.array, body.portal, body.path)


@router.get("/pes/{ref}", response_model=None)
def pe_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.pes.show(ref)


@router.delete("/pes/{ref}", status_code=204, response_model=None)
def pe_delete(svc: Svc, p: Caller, ref: Ref) -> None:
    svc.authz.admin(p)
    svc.pes.delete(ref)


# -- hosts, tenants, tokens -----------------------------------------------------------------
@router.get("/hosts", response_model=None)
def hosts(svc: Svc, p: Caller) -> list[dict[str, Any]]:
    svc.authz.admin(p)
    return svc.fencing.contacts()


@router.post("/hosts", status_code=201, response_model=None)
def host_add(svc: Svc, p: Caller, body: m.HostAdd) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.hosts.add(body.name, body.iqn, body.tenant)


@router.get("/hosts/{name}", response_model=None)
def host_show(svc: Svc, p: Caller, name: Ref) -> dict[str, Any]:
    svc.authz.host(p, name)
    return {**svc.hosts.show(name), **svc.fencing.contact(name)}


@router.delete("/hosts/{name}", status_code=204, response_model=None)
def host_remove(svc: Svc, p: Caller, name: Ref) -> None:
    svc.authz.admin(p)
    svc.hosts.remove(name)


@router.post("/hosts/{name}/token", response_model=None)
def host_token_rotate(svc: Svc, p: Caller, name: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.hosts.rotate_token(name)


@router.get("/tenants", response_model=None)
def tenants(svc: Svc, p: Caller) -> list[dict[str, Any]]:
    svc.authz.admin(p)
    return svc.tenants.listing()


@router.post("/tenants", status_code=201, response_model=None)
def tenant_create(svc: Svc, p: Caller, body: m.TenantCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.tenants.create(body.name)


@router.delete("/tenants/{name}", status_code=204, response_model=None)
def tenant_delete(svc: Svc, p: Caller, name: Ref) -> None:
    svc.authz.admin(p)
    svc.tenants.delete(name)


@router.post("/admin-tokens", status_code=201, response_model=None)
def admin_token(svc: Svc, p: Caller, body: m.TokenCreate) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.tenants.admin_token(body.name)


@router.get("/admin-tokens", response_model=None)
def admin_tokens(svc: Svc, p: Caller) -> list[dict[str, Any]]:
    svc.authz.admin(p)
    return svc.tenants.admin_tokens()


@router.delete("/admin-tokens/{name}", response_model=None)
def admin_token_revoke(svc: Svc, p: Caller, name: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.tenants.revoke_admin_token(name)
