"""The API contract: the OpenAPI document declares every answer, the contract check
(tests/openapicheck.py) is real, listings page with a cursor the client follows,
and the client refuses an answer off the shared models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from tests.openapicheck import Contract, ContractBroken, watch
from vvhost.api.app import create_app
from vvhost.client import Client
from vvhost.errors import InternalError, InvalidInput, NotFound
from vvhost.service import Config, Service

ERROR_STATUSES = {"400", "404", "409", "500"}


@pytest.fixture
def plane(tmp_path: Any) -> Iterator[tuple[Service, Client, Contract]]:
    svc = Service(Config(state_dir=os.path.join(str(tmp_path), "state")))
    svc.start()
    client = Client.in_process(create_app(svc))
    contract = Contract(client.http.get("/openapi.json").json())
    watch(client.http, contract)
    try:
        yield svc, client, contract
    finally:
        client.close()
        svc.close()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def test_every_operation_declares_its_answer_and_errors() -> None:
    doc = create_app(None).openapi()  # type: ignore[arg-type]  # the document needs no service
    ops = list(_operations(doc))
    assert len(ops) >= 60
    for method, path, op in ops:
        answers = op["responses"]
        ok = [s for s in answers if s.startswith("2")]
        assert len(ok) == 1, (method, path, sorted(answers))
        content = answers[ok[0]].get("content")
        if ok[0] == "204":
            assert not content, (method, path)
        else:
            (media,) = content
            assert set(content[media]["schema"]) & {"$ref", "type"}, (method, path, content)
        assert set(answers) >= ERROR_STATUSES, (method, path, sorted(answers))
        for status in ERROR_STATUSES:
            schema = answers[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
    assert "HTTPValidationError" not in str(doc)  # bad input is 400 ErrorOut, never 422 FastAPI
    error = doc["components"]["schemas"]["ErrorOut"]
    assert set(error["required"]) == {"code", "message"} and "fields" in error["properties"]


def test_listing_routes_page_with_a_cursor() -> None:
    doc = create_app(None).openapi()  # type: ignore[arg-type]
    listings = [p for p in doc["paths"] if doc["paths"][p].get("get")]
    paged = {
        p
        for p in listings
        if {"limit", "cursor"} <= {q["name"] for q in doc["paths"][p]["get"].get("parameters", [])}
    }
    paged.discard("/v1/events")  # a stream: its own numeric cursor ({"events", "cursor"})
    assert paged == {
        "/v1/arrays",
        "/v1/containers",
        "/v1/pes",
        "/v1/hosts",
        "/v1/tenants",
        "/v1/admin-tokens",
        "/v1/vvols",
        "/v1/bindings",
        "/v1/datastores",
        "/v1/replicas",
    }
    for path in paged:
        ref = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        page = doc["components"]["schemas"][ref["schema"]["$ref"].rsplit("/", 1)[1]]
        assert set(page["properties"]) == {"items", "next"}, (path, page)


def test_a_route_without_a_response_model_fails_the_check(tmp_path: Any) -> None:
    svc = Service(Config(state_dir=os.path.join(str(tmp_path), "state")))
    svc.start()
    try:
        app = create_app(svc)

        @app.get("/v1/untyped", response_model=None)
        def untyped() -> dict[str, Any]:
            return {"anything": 1}

        http = TestClient(app, raise_server_exceptions=False)
        contract = Contract(http.get("/openapi.json").json())
        watch(http, contract)
        assert http.get("/v1/health").status_code == 200  # a typed route passes
        with pytest.raises(ContractBroken, match="no response schema"):
            http.get("/v1/untyped")
    finally:
        svc.close()


def test_the_check_refuses_answers_off_the_document() -> None:
    contract = Contract(create_app(None).openapi())  # type: ignore[arg-type]
    good = b'{"ok": true, "version": "1", "recovered": [], "caller": "root"}'
    contract.check("GET", "/v1/health", 200, "application/json", good)
    with pytest.raises(ContractBroken, match="required property"):
        contract.check("GET", "/v1/health", 200, "application/json", b'{"ok": true}')
    with pytest.raises(ContractBroken, match="ok"):
        bad = b'{"ok": "yes", "version": "1", "recovered": [], "caller": "root"}'
        contract.check("GET", "/v1/health", 200, "application/json", bad)
    with pytest.raises(ContractBroken, match="not declared"):
        contract.check("GET", "/v1/health", 418, "application/json", b"{}")
    with pytest.raises(ContractBroken, match="next"):
        contract.check("GET", "/v1/tenants", 200, "application/json", b'{"items": []}')
    with pytest.raises(ContractBroken):  # an error must carry the error shape
        contract.check("GET", "/v1/vvols/x", 404, "application/json", b'{"detail": "no"}')


def test_the_client_follows_cursors_and_pages_on_request(
    plane: tuple[Service, Client, Contract],
) -> None:
    svc, api, contract = plane
    api.container_create("pool", "1G")
    made = [api.vvol_create("pool", "1M", name=f"v{i}")["id"] for i in range(7)]
    assert [v["id"] for v in api.vvols()] == made  # whole list, in creation order
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = api.page("vvols", limit=3, cursor=cursor, container="pool")
        assert len(page["items"]) <= 3
        seen += [v["id"] for v in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
        if pages == 1:  # a vvol deleted while paging neither shifts nor repeats the rest
            api.vvol_delete(made[4])
    assert pages == 2 and seen == made[:4] + made[5:]
    for name in ("t3", "t1", "t2"):
        api.tenant_create(name)
    first = api.page("tenants", limit=2)
    assert [t["name"] for t in first["items"]] == ["t1", "t2"] and first["next"]
    last = api.page("tenants", limit=2, cursor=first["next"])
    assert [t["name"] for t in last["items"]] == ["t3"] and last["next"] is None
    assert [t["name"] for t in api.tenants()] == ["t1", "t2", "t3"]
    with pytest.raises(InvalidInput, match="cursor"):
        api.page("vvols", cursor="not-a-cursor")
    with pytest.raises(InvalidInput, match="cursor"):  # a tenants cursor is no vvols cursor
        api.page("vvols", cursor=first["next"])
    with pytest.raises(InvalidInput):
        api.page("vvols", limit=0)
    assert ("GET", "/v1/vvols", 200) in contract.checked
    assert ("GET", "/v1/vvols", 400) in contract.checked


def test_the_client_refuses_an_answer_off_the_models() -> None:
    drifted = FastAPI()

    @drifted.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "version": "1", "recovered": [], "caller": "root", "extra": 1}

    @drifted.get("/v1/arrays")
    def arrays() -> dict[str, Any]:
        return {"items": [{"id": "a", "name": "x"}], "next": None}

    api = Client(TestClient(drifted), "drifted")
    with pytest.raises(InternalError, match="does not match the API"):
        api.health()  # a field the model does not declare
    with pytest.raises(InternalError, match="items.0"):
        api.arrays()  # an array without its fields


def test_every_route_answers_as_documented(
    plane: tuple[Service, Client, Contract], tmp_path: Any
) -> None:
    """One pass over the routes the lifecycle tests leave out; the contract check
    validates each answer (``contract.checked`` records which were seen)."""
    _svc, api, contract = plane
    assert api.health()["ok"] is True
    (array,) = api.arrays()
    assert api.array(array["id"])["free"] > 0 and api.array_reap(array["id"])["array"]
    api.container_create("pool", "1G")
    assert api.container_refresh("pool")["space"]["vvols"] == 0
    api.datastore_create("ds", "512M", ["pool"])
    api.tenant_create("t")
    host = api.host_add("h1", tenant="t")
    assert host["token"] and api.host_token_rotate("h1")["token"] != host["token"]
    assert api.host("h1")["bindings"] == 0 and [h["name"] for h in api.hosts()] == ["h1"]
    made = api.admin_token("ops")
    assert [t["name"] for t in api.admin_tokens()] == ["ops"] and made["token"]
    assert api.admin_token_revoke("ops")["admin_tokens_left"] == 0
    for name in ("f1", "f2"):
        api.pe_create(name, "file", path=str(tmp_path / name))
    assert [p["name"] for p in api.pes()] == ["f1", "f2"] and api.pe("f1")["alive"]
    op = str(uuid.uuid4())
    disk = api.vvol_create("pool", "4M", name="disk", op_id=op)
    with pytest.raises(NotFound):  # a finished operation leaves no progress behind
        api.operation(op)
    cfg = api.vvol_create(None, "1M", type="config", name="vm1", datastore="ds")
    handle = api.bind_one(disk["id"], "h1", pe="f1")
    assert handle["protocol"] == "file" and handle["pe"] == "f1"
    assert api.rebind(disk["id"], "h1", "f2")["pe"] == "f2"
    assert [b["pe"] for b in api.bindings(host="h1")] == ["f2"]
    assert api.datastore_resolve("ds", "h1")["host"] == "h1"
    (gone,) = api.unbind([disk["id"]], "h1")
    assert gone["ok"] and api.bindings() == []
    lease = api.lease_acquire(cfg["id"], "h1", "snapshot", 1234, 30.0)
    assert lease["token"] and api.lease_show(cfg["id"])["lease"]["op"] == "snapshot"
    assert api.lease_renew(cfg["id"], lease["token"], 30.0)["epoch"] == lease["epoch"]
    assert api.lease_release(cfg["id"], lease["token"])["released"] is True
    assert api.vm_event("h1", "vm1", "resumed", ["vda"])["recorded"] is False
    assert api.host_nbd_credentials("h1")["host"] == "h1"
    got = api.events()
    assert got["events"] and got["cursor"] >= got["events"][-1]["id"]
    assert api.health_report()["status"] in ("ok", "warning", "critical")
    assert api.audit()["ok"] and api.audit_fix()["ok"]
    api.host_remove("h1")
    api.pe_delete("f2")
    api.tenant_delete("t")
    seen = {(m, t) for m, t, _s in contract.checked}
    for route in (
        ("GET", "/v1/arrays/{ref}"),
        ("POST", "/v1/arrays/{ref}/reap"),
        ("POST", "/v1/hosts/{name}/token"),
        ("DELETE", "/v1/admin-tokens/{name}"),
        ("POST", "/v1/vvols/{ref}/rebind"),
        ("GET", "/v1/bindings"),
        ("POST", "/v1/vvols/{ref}/lease"),
        ("PUT", "/v1/vvols/{ref}/lease"),
        ("DELETE", "/v1/vvols/{ref}/lease"),
        ("POST", "/v1/hosts/{name}/vm-events"),
        ("GET", "/v1/hosts/{name}/nbd-credentials"),
        ("GET", "/v1/events"),
        ("GET", "/v1/health/report"),
        ("POST", "/v1/audit/fix"),
        ("GET", "/v1/ops/{op_id}"),
        ("DELETE", "/v1/pes/{ref}"),
    ):
        assert route in seen, route
