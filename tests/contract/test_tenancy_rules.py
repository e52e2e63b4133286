"""Ownership rules an admin meets, in-process and over the unix socket: a tenant
that still owns something cannot go, objects cannot name a tenant that does not
exist, a container a datastore maps cannot go, an operation id is used once, a
corrupt config document is reported as such, and an empty name says so.
Each refusal leaves the catalog as it was."""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from vvhost.api.app import create_app
from vvhost.client import Client
from vvhost.errors import Conflict, Corrupt, InUse, InvalidInput, NotFound
from vvhost.service import Config, Service


def test_tenant_that_owns_anything_cannot_be_deleted(api: Client) -> None:
    api.tenant_create("alpha")
    api.container_create("alpha-pool", "1G", tenant="alpha")
    with pytest.raises(InUse) as err:
        api.tenant_delete("alpha")
    assert "containers alpha-pool" in err.value.message
    api.container_create("shared", "1G")
    api.container_delete("alpha-pool")
    v = api.call("POST", "/v1/vvols", json={"container": "shared", "size": "1M", "tenant": "alpha"})
    assert v["tenant"] == "alpha"
    with pytest.raises(InUse) as err:
        api.tenant_delete("alpha")
    assert f"vvols {v['id']}" in err.value.message and err.value.exit_code == 4
    assert [t["name"] for t in api.tenants()] == ["alpha"]
    api.vvol_delete(v["id"])
    api.host_add("h1", tenant="alpha")
    with pytest.raises(InUse):
        api.tenant_delete("alpha")
    api.host_remove("h1")
    api.datastore_create("ds", "1M", ["shared"], tenant="alpha")
    with pytest.raises(InUse):
        api.tenant_delete("alpha")
    api.datastore_delete("ds")
    api.tenant_delete("alpha")
    assert api.tenants() == []


def test_objects_cannot_name_a_missing_tenant(api: Client) -> None:
    api.container_create("shared", "1G")
    with pytest.raises(NotFound) as err:
        api.container_create("c", "1G", tenant="ghost")
    assert err.value.message == "tenant 'ghost' not found"
    with pytest.raises(NotFound):
        api.datastore_create("ds", "1M", ["shared"], tenant="ghost")
    with pytest.raises(NotFound):
        api.call("POST", "/v1/vvols", json={"container": "shared", "size": "1M", "tenant": "ghost"})
    assert [c["name"] for c in api.containers()] == ["shared"]
    assert api.datastores() == [] and api.vvols() == []
    assert api.container("shared")["provisioned"] == 0


def test_vvol_cannot_belong_to_another_tenant_than_its_pool(api: Client) -> None:
    api.tenant_create("alpha")
    api.tenant_create("beta")
    api.container_create("alpha-pool", "1G", tenant="alpha")
    with pytest.raises(InvalidInput):
        api.call(
            "POST", "/v1/vvols", json={"container": "alpha-pool", "size": "1M", "tenant": "beta"}
        )
    assert api.vvols() == []


def test_container_mapped_by_a_datastore_cannot_be_deleted(api: Client) -> None:
    api.container_create("pool", "1G")
    api.datastore_create("ds", "1M", ["pool"])
    with pytest.raises(InUse) as err:
        api.container_delete("pool")
    assert "datastores ds map it" in err.value.message
    assert api.datastore("ds")["container_names"] == ["pool"]
    api.datastore_delete("ds")
    api.container_delete("pool")


def test_an_operation_id_is_used_once(api: Client) -> None:
    api.container_create("pool", "1G")
    op = str(uuid.uuid4())
    api.vvol_create("pool", "1M", name="first", op_id=op)
    with pytest.raises(Conflict) as err:
        api.vvol_create("pool", "1M", name="second", op_id=op)
    assert err.value.exit_code == 4 and op in err.value.message
    with pytest.raises(Conflict):
        api.vvol_snapshot("first", op_id=op)
    assert [v["name"] for v in api.vvols()] == ["first"]


def test_empty_names_say_what_is_wrong(api: Client) -> None:
    for call in (
        lambda: api.vvol(""),
        lambda: api.vvol_snapshot(""),
        lambda: api.datastore(""),
        lambda: api.operation(""),
    ):
        with pytest.raises(InvalidInput) as err:
            call()
        assert "empty" in err.value.message


@pytest.mark.parametrize("size", ["١٢٣M", "１２M", "²M", "1\n", "0x10M", "1e3", 2**64])
def test_sizes_take_ascii_digits_only(api: Client, size: str | int) -> None:
    api.container_create("pool", "1G")
    with pytest.raises(InvalidInput):
        api.vvol_create("pool", size)
    assert api.vvols() == []


def _store(api: Client, ref: str, payload: bytes, length: int | None = None) -> None:
    """Write a config vvol's bytes as they are (through the data API, on any array)."""
    header = b"VVHCFG01" + struct.pack("<Q", len(payload) if length is None else length)
    api.vvol_write(ref, 0, header + payload)


@pytest.mark.parametrize(
    "payload, length, says",
    [
        (b'{"domain": "<domain', None, "not valid JSON"),
        (b'["a", "list"]', None, "a JSON list, not an object"),
        (b'"\xff\xfe"', None, "not UTF-8"),
        (b"{}", 1 << 40, "header claims"),
    ],
)
def test_corrupt_config_document_is_reported(
    api: Client, payload: bytes, length: int | None, says: str
) -> None:
    api.container_create("pool", "1G")
    api.vvol_create("pool", "1M", type="config", name="vm1.config")
    api.config_put("vm1.config", {"domain": "<domain/>"})
    _store(api, "vm1.config", payload, length)
    with pytest.raises(Corrupt) as err:
        api.config_get("vm1.config")
    assert says in err.value.message and err.value.exit_code == 6
    assert err.value.code == "corrupt" and "vm1.config" in err.value.message
    api.config_put("vm1.config", {"domain": "<domain/>"})  # a good document heals it
    assert api.config_get("vm1.config") == {"domain": "<domain/>"}


@pytest.fixture
def raw(tmp_path: str) -> Iterator[tuple[Service, TestClient]]:
    svc = Service(Config(state_dir=os.path.join(tmp_path, "state")))
    svc.start()
    try:
        yield svc, TestClient(create_app(svc), raise_server_exceptions=False)
    finally:
        svc.close()


def test_op_id_of_an_unfinished_operation_is_409_without_sql(
    raw: tuple[Service, TestClient],
) -> None:
    """An operation left in the journal (still running, or interrupted) keeps its id."""
    svc, http = raw
    svc.containers.create("pool", "1G")
    op = str(uuid.uuid4())
    with svc.ctx.db.tx() as conn:
        svc.ctx.journal(conn, op, "create", None, {})
    resp = http.post("/v1/vvols", json={"container": "pool", "size": "1M", "op_id": op})
    assert resp.status_code == 409 and resp.json()["code"] == "conflict"
    for word in ("INSERT", "SELECT", "sqlite", "UNIQUE", "Traceback"):
        assert word not in resp.text
    assert svc.vvols.listing() == []
