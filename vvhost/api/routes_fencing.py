"""Routes for host fencing and VM recovery elsewhere.

POST /v1/hosts/{name}/fence                        (admin) -> what was cut
POST /v1/hosts/{name}/unfence                      (admin) -> what was dropped
POST /v1/hosts/{name}/recover-check {"vvols": [...]}  (the host itself or an admin)
                                    -> may that host start the VM holding these vvols
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from .deps import Caller, Ref, Svc
from .models import Body
from .schemas.common import ERRORS
from .schemas.inventory import FenceOut, RecoverCheckOut, UnfenceOut

router = APIRouter(prefix="/v1", responses=ERRORS)


class RecoverCheck(Body):
    vvols: list[str] = Field(max_length=256)


@router.post("/hosts/{name}/fence", response_model=FenceOut)
def host_fence(svc: Svc, p: Caller, name: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.fencing.fence(name)


@router.post("/hosts/{name}/unfence", response_model=UnfenceOut)
def host_unfence(svc: Svc, p: Caller, name: Ref) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.fencing.unfence(name)


@router.post("/hosts/{name}/recover-check", response_model=RecoverCheckOut)
def host_recover_check(svc: Svc, p: Caller, name: Ref, body: RecoverCheck) -> dict[str, Any]:
    svc.authz.host(p, name)
    return svc.fencing.recover_check(svc.authz.vvols(p, body.vvols), name)
