"""Routes for bindings.  A host binds only for itself, only its tenant's vvols."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from . import models as m
from .deps import Caller, OptRef, Ref, Svc

router = APIRouter(prefix="/v1")


@router.post("/bind", response_model=None)
def bind(svc: Svc, p: Caller, body: m.Bind) -> list[dict[str, Any]]:
    svc.authz.host(p, body.host)
    return svc.bindings.bind(svc.authz.vvols(p, body.vvols), body.host, body.pe, body.shared)


@router.post("/unbind", response_model=None)
def unbind(svc: Svc, p: Caller, body: m.Unbind) -> list[dict[str, Any]]:
    svc.authz.host(p, body.host)
    return svc.bindings.unbind(svc.authz.vvols(p, body.vvols), body.host, body.all)


@router.post("/vvols/{ref}/rebind", response_model=None)
def rebind(svc: Svc, p: Caller, ref: Ref, body: m.Rebind) -> dict[str, Any]:
    svc.authz.host(p, body.host)
    return svc.bindings.rebind(svc.authz.vvol(p, ref), body.host, body.pe)


@router.get("/bindings", response_model=None)
def bindings(svc: Svc, p: Caller, host: OptRef = None, vvol: OptRef = None) -> list[dict[str, Any]]:
    if not p.is_admin:
        host = p.name
    return svc.bindings.listing(host, svc.authz.vvol(p, vvol) if vvol else None)
