"""Routes for a host's data-path credentials: NBD over TLS (certificate, key, CA)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .deps import Caller, Svc
from .schemas import inventory as i
from .schemas.common import ERRORS

router = APIRouter(prefix="/v1", responses=ERRORS)


@router.get(
    "/hosts/{name}/nbd-credentials",
    response_model=i.NbdCredentials,
    response_model_exclude_unset=True,
)
def nbd_credentials(svc: Svc, p: Caller, name: str) -> dict[str, Any]:
    """The host's client certificate, key and CA: for the host itself or an admin."""
    svc.authz.host(p, name)
    return svc.nbd.credentials(name)
