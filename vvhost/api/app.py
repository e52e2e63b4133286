"""The FastAPI application: thin routes over :class:`vvhost.service.Service`.

One app per transport, differing only in how the caller is authenticated: on
the unix socket (root only) every caller is admin; on TCP+TLS every request
carries ``Authorization: Bearer TOKEN``.  Errors are JSON ``{"code", "message",
"fields"}`` with the status the error class names; malformed input is 400
``invalid-input``, an oversized body 413, a catalog constraint (a reused id)
409 ``conflict``, and never a 500 with a traceback or SQL text: an unexpected
failure answers its exception's type only and is logged in full on the server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import Conflict, InternalError, InvalidInput, ReplicaUnavailable, VvhostError
from ..model import Principal
from ..service import Service
from ..service.tenancy import UNIX_ADMIN
from . import (
    routes_admin,
    routes_binding,
    routes_credentials,
    routes_events,
    routes_fencing,
    routes_leases,
    routes_vvols,
)
from .schemas.common import ERRORS

MAX_BODY = 1 << 20
log = logging.getLogger("vvhost.api")
Authenticate = Callable[[Request], Principal]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def unix_admin(_request: Request) -> Principal:
    return UNIX_ADMIN


def bearer(service: Service) -> Authenticate:
    def authenticate(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return service.tenants.authenticate(token.strip() if scheme.lower() == "bearer" else None)

    return authenticate


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before they are read whole."""

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _too_large(scope, receive, send, self.limit)
            return
        seen = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(scope, receive, send, self.limit)


class _TooLarge(Exception):
    pass


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    err = InvalidInput(detail=f"request body larger than {limit} bytes")
    await JSONResponse(status_code=413, content=err.to_dict())(scope, receive, send)


class FencedReplica:
    """A replica that lost its lease refuses every request before it starts it, as
    ``replica-unavailable``: a client with several URLs sends it to the next one."""

    def __init__(self, app: Any, service: Service | None) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        replica = self.service.ctx.replica if self.service is not None else None
        if scope["type"] != "http" or replica is None or replica.fenced is None:
            await self.app(scope, receive, send)
            return
        err = ReplicaUnavailable(replica=replica.id, detail=f"it lost its lease ({replica.fenced})")
        await JSONResponse(status_code=err.status, content=err.to_dict())(scope, receive, send)


ERROR_422 = {
    "description": ERRORS[422]["description"],
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
}


def _document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, as the app really answers: malformed input is 400
    ``invalid-input`` (declared on every route), never FastAPI's 422 body."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for ops in doc.get("paths", {}).values():
            for op in ops.values():
                answers = op.get("responses", {})
                if "HTTPValidationError" in str(answers.get("422", "")):
                    answers["422"] = ERROR_422
        schemas = doc.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
    return app.openapi_schema


def create_app(service: Service, authenticate: Authenticate = unix_admin) -> FastAPI:
    # Handlers return plain JSON-ready dicts and lists; each route's response model
    # (vvhost.api.schemas) checks and documents them on the way out.
    app = FastAPI(
        title="vvhost control plane",
        version=__version__,
        default_response_class=JSONResponse,
        redirect_slashes=False,
    )
    app.openapi = lambda: _document(app)  # type: ignore[method-assign]
    app.state.service = service
    app.state.authenticate = authenticate
    for module in (
        routes_admin,
        routes_vvols,
        routes_binding,
        routes_credentials,
        routes_leases,
        routes_events,
        routes_fencing,
    ):
        app.include_router(module.router)
    app.add_middleware(BodyLimit)
    app.add_middleware(FencedReplica, service=service)

    @app.exception_handler(VvhostError)
    async def _vvhost_error(_req: Request, exc: VvhostError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(status_code=exc.status, content=exc.to_dict(), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid")).replace("\n", " ")[:200]
        err = InvalidInput(detail=f"{where or 'request'}: {message}")
        return JSONResponse(status_code=400, content=err.to_dict())

    @app.exception_handler(HTTPException)
    async def _http(_req: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        body = {"code": code, "message": str(exc.detail), "fields": {}}
        return JSONResponse(status_code=exc.status_code, content=body)

    @app.exception_handler(Exception)
    async def _internal(req: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, IntegrityError):  # a race past the checks: someone was first
            err: VvhostError = Conflict(
                detail="the catalog already holds a record with that name or id; retry with "
                "a new one"
            )
            return JSONResponse(status_code=err.status, content=err.to_dict())
        log.error("%s %s failed", req.method, req.url.path, exc_info=exc)
        err = InternalError(detail=f"internal error ({type(exc).__name__}); see the server log")
        return JSONResponse(status_code=500, content=err.to_dict())

    return app
