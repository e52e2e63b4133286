"""The FastAPI application: thin routes over :class:`vvhost.service.Service`.

Errors are JSON ``{"code", "message", "fields"}`` with the status the error
class names; request validation failures are 400 ``invalid-input``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .. import __version__
from ..errors import InternalError, InvalidInput, VvhostError
from ..service import Service
from . import models as m


def create_app(service: Service) -> FastAPI:
    # Handlers return plain JSON-ready dicts and lists: send them as they are rather
    # than validating them again against their annotations.
    app = FastAPI(
        title="vvhost control plane", version=__version__, default_response_class=JSONResponse
    )
    svc = service

    @app.exception_handler(VvhostError)
    async def _vvhost_error(_req: Request, exc: VvhostError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=exc.to_dict())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        err = InvalidInput(detail=f"{where or 'request'}: {first.get('msg', 'invalid')}")
        return JSONResponse(status_code=400, content=err.to_dict())

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception) -> JSONResponse:
        err = InternalError(detail=f"internal error: {type(exc).__name__}: {exc}")
        return JSONResponse(status_code=500, content=err.to_dict())

    @app.get("/v1/health", response_model=None)
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__, "recovered": svc.recovered}

    @app.get("/v1/audit", response_model=None)
    def audit() -> dict[str, Any]:
        return svc.audit()

    @app.get("/v1/ops/{op_id}", response_model=None)
    def operation(op_id: str) -> dict[str, Any]:
        return svc.operation(op_id)

    # -- arrays ---------------------------------------------------------------------------
    @app.get("/v1/arrays", response_model=None)
    def arrays() -> list[dict[str, Any]]:
        return [a.to_dict() for a in svc.arrays.listing()]

    @app.post("/v1/arrays", status_code=201, response_model=None)
    def array_add(body: m.ArrayCreate) -> dict[str, Any]:
        return svc.arrays.add(body.name, body.backend, body.path).to_dict()

    @app.get("/v1/arrays/{ref}", response_model=None)
    def array_show(ref: str) -> dict[str, Any]:
        return svc.arrays.show(ref)

    @app.delete("/v1/arrays/{ref}", status_code=204, response_model=None)
    def array_delete(ref: str) -> None:
        svc.arrays.delete(ref)

    # -- containers -----------------------------------------------------------------------
    @app.get("/v1/containers", response_model=None)
    def containers() -> list[dict[str, Any]]:
        return [c.to_dict() for c in svc.containers.listing()]

    @app.post("/v1/containers", status_code=201, response_model=None)
    def container_create(body: m.ContainerCreate) -> dict[str, Any]:
        return svc.containers.create(body.name, body.capacity, body.arrays, body.tenant).to_dict()

    @app.get("/v1/containers/{ref}", response_model=None)
    def container_show(ref: str) -> dict[str, Any]:
        return svc.containers.show(ref)

    @app.delete("/v1/containers/{ref}", status_code=204, response_model=None)
    def container_delete(ref: str) -> None:
        svc.containers.delete(ref)

    # -- vvols ----------------------------------------------------------------------------
    @app.get("/v1/vvols", response_model=None)
    def vvols(container: str | None = None) -> list[dict[str, Any]]:
        return svc.vvols.listing(container)

    @app.post("/v1/vvols", status_code=201, response_model=None)
    def vvol_create(body: m.VvolCreate) -> dict[str, Any]:
        return svc.vvols.create(
            body.container, body.size, body.type, body.name, body.metadata, body.op_id
        )

    @app.get("/v1/vvols/{ref}", response_model=None)
    def vvol_show(ref: str) -> dict[str, Any]:
        return svc.vvols.show(ref)

    @app.delete("/v1/vvols/{ref}", status_code=204, response_model=None)
    def vvol_delete(ref: str, generation: int | None = None) -> None:
        svc.vvols.delete(ref, generation)

    @app.post("/v1/vvols/{ref}/extend", response_model=None)
    def vvol_extend(ref: str, body: m.Extend) -> dict[str, Any]:
        return svc.vvols.extend(ref, body.size, body.generation)

    @app.post("/v1/vvols/{ref}/meta", response_model=None)
    def vvol_meta(ref: str, body: m.Meta) -> dict[str, Any]:
        return svc.vvols.set_meta(ref, body.pairs, body.generation)

    @app.post("/v1/vvols/{ref}/snapshot", status_code=201, response_model=None)
    def vvol_snapshot(ref: str, body: m.Snapshot) -> dict[str, Any]:
        return svc.cow.snapshot(ref, body.name, body.op_id)

    @app.post("/v1/vvols/{ref}/clone", status_code=201, response_model=None)
    def vvol_clone(ref: str, body: m.Clone) -> dict[str, Any]:
        return svc.cow.clone(ref, body.linked, body.container, body.name, body.op_id)

    @app.post("/v1/vvols/{ref}/revert", response_model=None)
    def vvol_revert(ref: str, body: m.Revert) -> dict[str, Any]:
        return svc.cow.revert(ref, body.to, body.generation, body.op_id)

    @app.post("/v1/vvols/{ref}/move", response_model=None)
    def vvol_move(ref: str, body: m.Move) -> dict[str, Any]:
        return svc.data.move(ref, body.container, body.op_id)

    @app.get("/v1/vvols/{ref}/bitmap", response_model=None)
    def vvol_bitmap(
        ref: str, base: str | None = None, chunk: str | None = None, method: str | None = None
    ) -> dict[str, Any]:
        return svc.data.bitmap(ref, base, chunk, method)

    @app.post("/v1/vvols/{ref}/copy-diffs", response_model=None)
    def vvol_copy_diffs(ref: str, body: m.CopyDiffs) -> dict[str, Any]:
        return svc.data.copy_diffs(ref, body.base, body.to, body.op_id)

    # -- hosts, protocol endpoints, bindings ----------------------------------------------
    @app.get("/v1/hosts", response_model=None)
    def hosts() -> list[dict[str, Any]]:
        return svc.hosts.listing()

    @app.post("/v1/hosts", status_code=201, response_model=None)
    def host_add(body: m.HostAdd) -> dict[str, Any]:
        return svc.hosts.add(body.name, body.iqn)

    @app.get("/v1/hosts/{name}", response_model=None)
    def host_show(name: str) -> dict[str, Any]:
        return svc.hosts.show(name)

    @app.delete("/v1/hosts/{name}", status_code=204, response_model=None)
    def host_remove(name: str) -> None:
        svc.hosts.remove(name)

    @app.get("/v1/pes", response_model=None)
    def pes() -> list[dict[str, Any]]:
        return svc.pes.listing()

    @app.post("/v1/pes", status_code=201, response_model=None)
    def pe_create(body: m.PeCreate) -> dict[str, Any]:
        return svc.pes.create(body.name, body.protocol, body.array, body.portal, body.path)

    @app.get("/v1/pes/{ref}", response_model=None)
    def pe_show(ref: str) -> dict[str, Any]:
        return svc.pes.show(ref)

    @app.delete("/v1/pes/{ref}", status_code=204, response_model=None)
    def pe_delete(ref: str) -> None:
        svc.pes.delete(ref)

    @app.post("/v1/bind", response_model=None)
    def bind(body: m.Bind) -> list[dict[str, Any]]:
        return svc.bindings.bind(body.vvols, body.host, body.pe, body.shared)

    @app.post("/v1/unbind", response_model=None)
    def unbind(body: m.Unbind) -> list[dict[str, Any]]:
        return svc.bindings.unbind(body.vvols, body.host, body.all)

    @app.post("/v1/vvols/{ref}/rebind", response_model=None)
    def rebind(ref: str, body: m.Rebind) -> dict[str, Any]:
        return svc.bindings.rebind(ref, body.host, body.pe)

    @app.get("/v1/bindings", response_model=None)
    def bindings(host: str | None = None, vvol: str | None = None) -> list[dict[str, Any]]:
        return svc.bindings.listing(host, vvol)

    return app
