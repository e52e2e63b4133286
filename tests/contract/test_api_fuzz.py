"""Malformed input at the API edge gets a clean 4xx with a JSON error, never a 500:
random bodies and path segments, then every body field, query number and path
reference of every route set to a hostile value (integers past 2**63, digits of
other scripts, empty and blank references), for an admin over the unix-socket
app, an admin token and a host token.  No error body carries SQL or a traceback,
and every answer matches the OpenAPI document (tests/openapicheck.py)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.openapicheck import Contract, watch
from vvhost.api.app import bearer, create_app
from vvhost.service import Config, Service

ROUTES = [
    ("GET", "/v1/vvols/{x}"),
    ("DELETE", "/v1/vvols/{x}"),
    ("POST", "/v1/vvols"),
    ("POST", "/v1/vvols/{x}/extend"),
    ("POST", "/v1/vvols/{x}/snapshot"),
    ("POST", "/v1/vvols/{x}/clone"),
    ("POST", "/v1/vvols/{x}/revert"),
    ("POST", "/v1/vvols/{x}/move"),
    ("GET", "/v1/vvols/{x}/bitmap"),
    ("POST", "/v1/vvols/{x}/copy-diffs"),
    ("POST", "/v1/vvols/{x}/meta"),
    ("POST", "/v1/containers"),
    ("GET", "/v1/containers/{x}"),
    ("POST", "/v1/arrays"),
    ("POST", "/v1/datastores"),
    ("GET", "/v1/datastores/{x}/resolve"),
    ("POST", "/v1/bind"),
    ("POST", "/v1/unbind"),
    ("POST", "/v1/hosts"),
    ("POST", "/v1/pes"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/ops/{x}"),
    ("GET", "/v1/vvols/{x}/config"),
    ("PUT", "/v1/vvols/{x}/config"),
    ("POST", "/v1/vvols/{x}/rebind"),
    ("GET", "/v1/datastores/{x}"),
    ("POST", "/v1/datastores/{x}/extend"),
    ("DELETE", "/v1/datastores/{x}"),
    ("DELETE", "/v1/containers/{x}"),
    ("DELETE", "/v1/tenants/{x}"),
    ("POST", "/v1/admin-tokens"),
    ("DELETE", "/v1/admin-tokens/{x}"),
    ("POST", "/v1/snapshot-groups/prepare"),
    ("POST", "/v1/snapshot-groups/commit"),
]

# Values that once reached int(), SQLite or a regular expression's \d unchecked.
HOSTILE: list[Any] = [
    2**63,
    2**64 + 5,
    -(2**63) - 1,
    10**30,
    -1,
    "١٢٣M",
    "١٢٣",
    "²",
    "１２M",
    "12\u0663M",
    "",
    " ",
    "\u0000",
    "1e3",
    1.5,
    True,
    None,
    [],
    {},
    "٣" * 300,
]
FIELDS = {
    "/v1/vvols": ["size", "container", "datastore", "tenant", "type", "name", "op_id", "metadata"],
    "/v1/vvols/v/extend": ["size", "generation"],
    "/v1/vvols/v/meta": ["pairs", "generation"],
    "/v1/vvols/v/snapshot": ["name", "op_id"],
    "/v1/vvols/v/clone": ["linked", "container", "name", "op_id"],
    "/v1/vvols/v/revert": ["to", "generation", "op_id"],
    "/v1/vvols/v/move": ["container", "op_id"],
    "/v1/vvols/v/copy-diffs": ["base", "to", "op_id"],
    "/v1/containers": ["name", "capacity", "arrays", "tenant"],
    "/v1/datastores": ["name", "capacity", "containers", "tenant"],
    "/v1/datastores/ds/extend": ["capacity"],
    "/v1/bind": ["vvols", "host", "pe", "shared"],
    "/v1/unbind": ["vvols", "host", "all"],
    "/v1/hosts": ["name", "iqn", "tenant"],
    "/v1/tenants": ["name"],
    "/v1/admin-tokens": ["name"],
}
VALID = {
    "size": "1M",
    "capacity": "1M",
    "name": "n",
    "to": "v",
    "base": "v",
    "container": "pool",
    "vvols": ["v"],
    "host": "h",
    "pairs": ["a=b"],
}
QUERIES = [
    ("DELETE", "/v1/vvols/v", "generation"),
    ("GET", "/v1/vvols/v/bitmap", "chunk"),
    ("GET", "/v1/vvols/v/bitmap", "base"),
    ("GET", "/v1/vvols", "container"),
    ("GET", "/v1/bindings", "vvol"),
    ("GET", "/v1/datastores/ds/resolve", "host"),
    ("GET", "/v1/events", "cursor"),
    ("GET", "/v1/events", "since"),
    ("GET", "/v1/events", "limit"),
    ("GET", "/v1/events", "wait"),
    ("GET", "/v1/health/report", "stuck"),
    ("POST", "/v1/audit/fix", "grace"),
]
SQL_WORDS = ("SELECT", "INSERT", "UPDATE ", "sqlite", "IntegrityError", "Traceback", "[SQL")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.dictionaries(
        st.sampled_from(
            [
                "name",
                "size",
                "capacity",
                "container",
                "vvols",
                "host",
                "to",
                "base",
                "pairs",
                "protocol",
                "path",
                "portal",
                "linked",
                "generation",
                "op_id",
                "junk",
            ]
        ),
        json_values,
        max_size=6,
    ).map(json.dumps),
    json_values.map(json.dumps),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)
segments = st.one_of(
    st.text(min_size=1, max_size=300),
    st.sampled_from([str(2**64), "١٢٣", "²", " ", "-1", str(10**40), "v", "pool", "ds"]),
).filter(lambda s: s not in (".", ".."))


@pytest.fixture(scope="module", params=["sqlite", "pg"])
def catalog_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The fuzzed plane's catalog: SQLite, or a database of the session's PostgreSQL."""
    if request.param == "sqlite":
        yield None
        return
    lab = request.getfixturevalue("pg_server")
    name = f"fuzz_{uuid.uuid4().hex[:12]}"
    url = lab.create_database(name)
    try:
        yield url
    finally:
        lab.drop_database(name)


@pytest.fixture(scope="module")
def clients(
    tmp_path_factory: pytest.TempPathFactory, catalog_url: str | None
) -> Iterator[list[TestClient]]:
    state = os.path.join(str(tmp_path_factory.mktemp("fuzz")), "s")
    svc = Service(Config(state_dir=state, db_url=catalog_url))
    svc.start()
    svc.containers.create("pool", "1G")
    svc.vvols.create("pool", "1M", name="v")
    svc.vvols.create("pool", "1M", name="cfg", type="config")
    svc.datastores.create("ds", "1M", ["pool"])
    svc.tenants.create("t")
    host_token = svc.hosts.add("h", tenant="t")["token"]
    svc.vvols.create("pool", "1M", name="v", tenant="t")  # the host's own "v"
    token = svc.tenants.admin_token("fuzz")["token"]
    admin = TestClient(create_app(svc), raise_server_exceptions=False)
    remote = [
        TestClient(
            create_app(svc, bearer(svc)),
            raise_server_exceptions=False,
            headers={"Authorization": f"Bearer {t}"},
        )
        for t in (token, host_token)
    ]
    contract = Contract(admin.get("/openapi.json").json())
    for http in (admin, *remote):
        watch(http, contract)
    yield [admin, *remote]
    svc.close()


def _clean(resp: Any) -> None:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"code", "message", "fields"}, body
    assert body["code"] and isinstance(body["message"], str) and "\n" not in body["message"]
    assert isinstance(body["fields"], dict)
    for word in SQL_WORDS:
        assert word not in resp.text, (word, resp.text[:300])


def _answered(resp: Any) -> None:
    """Any answer but an internal error; errors in the one JSON shape (a capacity
    error, 507, is a fair answer once the fuzzing has filled the pool)."""
    assert resp.status_code != 500, resp.text[:300]
    if resp.status_code < 400:
        assert resp.status_code == 204 or resp.headers["content-type"].startswith(
            "application/json"
        )
        return
    if resp.status_code == 507:
        assert resp.json()["code"] == "capacity-exceeded"
        return
    _clean(resp)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=st.sampled_from(ROUTES), segment=segments, body=bodies, which=st.integers(0, 2))
def test_malformed_requests_get_clean_4xx(
    clients: list[TestClient], route: tuple[str, str], segment: str, body: str, which: int
) -> None:
    method, template = route
    path = template.replace("{x}", quote(segment, safe=""))
    resp = clients[which].request(
        method,
        path,
        content=body.encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json"},
    )
    if resp.status_code < 400:  # a valid request by chance: fine, as long as it is JSON
        assert (
            resp.headers["content-type"].startswith("application/json") or resp.status_code == 204
        )
        return
    _clean(resp)


def test_oversized_body_is_413(clients: list[TestClient]) -> None:
    resp = clients[0].post(
        "/v1/vvols",
        content=b"{" + b" " * (2 << 20) + b"}",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413 and resp.json()["code"] == "invalid-input"


def test_openapi_document_describes_the_api(clients: list[TestClient]) -> None:
    doc = clients[0].get("/openapi.json").json()
    assert {"/v1/vvols", "/v1/bind", "/v1/datastores/{ref}/resolve"} <= set(doc["paths"])


@pytest.mark.parametrize("which", [0, 1, 2], ids=["unix-admin", "admin-token", "host-token"])
@pytest.mark.parametrize("path", sorted(FIELDS))
def test_hostile_field_values_never_500(clients: list[TestClient], path: str, which: int) -> None:
    for field in FIELDS[path]:
        for value in HOSTILE:
            body = {k: v for k, v in VALID.items() if k in FIELDS[path]}
            body[field] = value
            resp = clients[which].post(path, json=body)
            assert resp.status_code != 500, (path, field, value, resp.text[:300])
            _answered(resp)
            if field in ("size", "capacity") and isinstance(value, str) and which < 2:
                # sizes are ASCII digits and a unit, nothing else
                assert resp.status_code == 400, (path, field, value, resp.text[:300])
                assert resp.json()["code"] == "invalid-input"


@pytest.mark.parametrize("which", [0, 1, 2], ids=["unix-admin", "admin-token", "host-token"])
def test_hostile_query_values_and_references_never_500(
    clients: list[TestClient], which: int
) -> None:
    http = clients[which]
    for method, path, name in QUERIES:
        for value in HOSTILE:
            if isinstance(value, (list, dict)) or value is None:
                continue
            resp = http.request(method, path, params={name: str(value)})
            assert resp.status_code != 500, (path, name, value, resp.text[:300])
            _answered(resp)
    for method, template in ROUTES:
        for ref in ("", " ", "١٢٣", str(2**64), "%00", "..%2F"):
            resp = http.request(method, template.replace("{x}", ref), json={})
            assert resp.status_code != 500, (template, ref, resp.text[:300])
            _answered(resp)


def test_config_put_with_hostile_documents_never_500(clients: list[TestClient]) -> None:
    for doc in ({"n": 2**64}, {"n": -(2**63) - 1}, {"s": "١٢٣"}, {"": ""}, {"x": [[]] * 50}):
        resp = clients[0].put("/v1/vvols/cfg/config", json={"document": doc})
        assert resp.status_code != 500, resp.text[:300]
        _answered(resp)
        got = clients[0].get("/v1/vvols/cfg/config")
        assert got.status_code == 200 and got.json()["document"] == doc
