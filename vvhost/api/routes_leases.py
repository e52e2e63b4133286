"""Routes for per-VM leases (one VM operation at a time).

    POST   /v1/vvols/{config}/lease   {"host", "op", "pid", "ttl", "dead_epoch"?}
                                                                    -> the lease and its token
    PUT    /v1/vvols/{config}/lease   {"token", "ttl"}              -> renewed (or 409 lease-lost)
    DELETE /v1/vvols/{config}/lease?token=TOKEN                      -> released
    GET    /v1/vvols/{config}/lease                                  -> who holds it, if anyone

A host leases only VMs of its own tenant (others answer 404) and only for itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from ..errors import NotFound
from ..service.leases import LeaseOps
from .deps import Caller, Ref, Svc
from .models import Body
from .schemas import binding as b
from .schemas.common import ERRORS

router = APIRouter(prefix="/v1", responses=ERRORS)


class LeaseTake(Body):
    host: str = Field(max_length=128)
    op: str = Field(max_length=64)
    pid: int = Field(ge=0)
    ttl: float
    dead_epoch: int | None = None  # this host's lease whose owner process is gone


class LeaseRenew(Body):
    token: str = Field(max_length=64)
    ttl: float


@router.post("/vvols/{ref}/lease", response_model=b.LeaseOut, response_model_exclude_unset=True)
def lease_acquire(svc: Svc, p: Caller, ref: Ref, body: LeaseTake) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    svc.authz.host(p, body.host)
    return LeaseOps(svc.ctx).acquire(ref, body.host, body.op, body.pid, body.ttl, body.dead_epoch)


@router.put("/vvols/{ref}/lease", response_model=b.LeaseOut, response_model_exclude_unset=True)
def lease_renew(svc: Svc, p: Caller, ref: Ref, body: LeaseRenew) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    return LeaseOps(svc.ctx).renew(ref, body.token, body.ttl)


@router.delete(
    "/vvols/{ref}/lease", response_model=b.LeaseReleased, response_model_exclude_unset=True
)
def lease_release(
    svc: Svc, p: Caller, ref: Ref, token: Annotated[str, Query(max_length=64)]
) -> dict[str, Any]:
    try:
        svc.authz.vvol(p, ref)
    except NotFound:  # a VM deleted under its lease: its holder's token still releases it
        return LeaseOps(svc.ctx).release_orphan(ref, token)
    return LeaseOps(svc.ctx).release(ref, token)


@router.get("/vvols/{ref}/lease", response_model=b.LeaseShown, response_model_exclude_unset=True)
def lease_show(svc: Svc, p: Caller, ref: Ref) -> dict[str, Any]:
    svc.authz.vvol(p, ref)
    return LeaseOps(svc.ctx).show(ref)
