"""Routes for events, health, the audit's repairs and metrics.

GET  /v1/events?cursor=ID&since=T&limit=N&wait=S   a tenant's own events (admins: all),
                                                   oldest first, and the next cursor
POST /v1/hosts/{name}/vm-events {"vm", "what", "disks"}
                                                   a host reports a VM of its own paused
                                                   for space, or running again
GET  /v1/health/report?stuck=S                     admin: what needs attention
POST /v1/audit/fix?grace=S                         admin: repair what is safe, re-audit
GET  /metrics                                      admin: Prometheus text format
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Field

from ..service import vmevents
from ..service.events import MAX_LIMIT, MAX_WAIT
from ..service.metrics import CONTENT_TYPE
from .deps import Caller, Svc
from .models import Body
from .schemas import admin as a
from .schemas.common import ERRORS

router = APIRouter(responses=ERRORS)


@router.get("/v1/events", response_model=a.EventsOut, response_model_exclude_unset=True)
def events(
    svc: Svc,
    p: Caller,
    cursor: Annotated[int, Query(ge=0, le=(1 << 62))] = 0,
    since: Annotated[float | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 1000,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0,
) -> dict[str, Any]:
    return svc.ctx.events.read(p, after=cursor, since=since, limit=limit, wait=wait)


class VmEvent(Body):
    vm: str = Field(max_length=128)
    what: str = Field(max_length=32)
    disks: list[str] = Field(default_factory=list, max_length=64)


@router.post(
    "/v1/hosts/{name}/vm-events", response_model=a.VmEventOut, response_model_exclude_unset=True
)
def vm_event(svc: Svc, p: Caller, name: str, body: VmEvent) -> dict[str, Any]:
    svc.authz.host(p, name)
    return vmevents.report(svc.ctx, name, body.vm, body.what, body.disks)


@router.get("/v1/health/report", response_model=a.HealthReport, response_model_exclude_unset=True)
def health_report(
    svc: Svc, p: Caller, stuck: Annotated[float, Query(gt=0, le=86400 * 30)] = 600.0
) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.health(stuck)


@router.post("/v1/audit/fix", response_model=a.AuditFixOut, response_model_exclude_unset=True)
def audit_fix(
    svc: Svc, p: Caller, grace: Annotated[float | None, Query(ge=0)] = None
) -> dict[str, Any]:
    svc.authz.admin(p)
    return svc.audit(fix=True, grace=grace)


TEXT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text",
        "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
    }
}


@router.get("/metrics", response_model=None, response_class=Response, responses=TEXT)
def metrics(svc: Svc, p: Caller) -> Response:
    svc.authz.admin(p)
    return Response(content=svc.metrics.render(), media_type=CONTENT_TYPE)
