"""What every route needs: the service, the caller, and validated path parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from ..model import Principal
from ..service import Service

REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$"
Ref = Annotated[str, Path(max_length=128, pattern=REF_PATTERN)]
OptRef = Annotated[str | None, Query(max_length=128, pattern=REF_PATTERN)]


def get_service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def get_principal(request: Request) -> Principal:
    """Who calls: decided by the app's authenticator (unix socket: admin; TCP: token)."""
    principal: Principal = request.app.state.authenticate(request)
    return principal


Svc = Annotated[Service, Depends(get_service)]
Caller = Annotated[Principal, Depends(get_principal)]

# Numbers the catalog stores as signed 64-bit integers: larger ones are bad input, not a 500.
MAX_INT = (1 << 63) - 1
Generation = Annotated[int | None, Query(ge=0, le=MAX_INT)]
