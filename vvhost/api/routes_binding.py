"""Routes for bindings.  A host binds only for itself, only its tenant's vvols."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from . import models as m
from .deps import Caller, OptRef, Ref, Svc
from .paging import Cursor, Limit, fields, page_of
from .schemas import binding as b
from .schemas.common import ERRORS, Page

router = APIRouter(prefix="/v1", responses=ERRORS)


@router.post("/bind", response_model=list[b.BindResult], response_model_exclude_unset=True)
def bind(svc: Svc, p: Caller, body: m.Bind) -> list[dict[str, Any]]:
    svc.authz.host(p, body.host)
    return svc.bindings.bind(svc.authz.vvols(p, body.vvols), body.host, body.pe, body.shared)


@router.post("/unbind", response_model=list[b.UnbindResult], response_model_exclude_unset=True)
def unbind(svc: Svc, p: Caller, body: m.Unbind) -> list[dict[str, Any]]:
    svc.authz.host(p, body.host)
    return svc.bindings.unbind(svc.authz.vvols(p, body.vvols), body.host, body.all)


@router.post("/vvols/{ref}/rebind", response_model=b.HandleOut, response_model_exclude_unset=True)
def rebind(svc: Svc, p: Caller, ref: Ref, body: m.Rebind) -> dict[str, Any]:
    svc.authz.host(p, body.host)
    return svc.bindings.rebind(svc.authz.vvol(p, ref), body.host, body.pe)


@router.get("/bindings", response_model=Page[b.HandleOut], response_model_exclude_unset=True)
def bindings(
    svc: Svc,
    p: Caller,
    host: OptRef = None,
    vvol: OptRef = None,
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> dict[str, Any]:
    if not p.is_admin:
        host = p.name
    vid = svc.authz.vvol(p, vvol) if vvol else None

    def fetch(after: Any, n: int) -> list[dict[str, Any]]:
        return svc.bindings.listing(host, vid, after=after, limit=n)

    return page_of(fetch, _binding_key, ("", ""), limit, cursor)


_binding_key = fields("vvol", "host")
