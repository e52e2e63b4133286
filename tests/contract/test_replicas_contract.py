"""The replica and endpoint-node routes, on SQLite and PostgreSQL (in process and
over the socket; every answer is checked against the OpenAPI document)."""

from __future__ import annotations

import os

import pytest

from tests.patterns import CHUNK, Patterns
from vvhost.client import Client
from vvhost.errors import InvalidInput, NotFound


def test_replica_list(api: Client, db_url: str | None) -> None:
    rows = api.replicas()
    if db_url is None:
        assert rows == []  # SQLite: one control plane, no leases
        return
    (me,) = rows
    assert me["me"] and me["state"] == "live" and me["epoch"] >= 1
    assert 0 < me["lease_left"] <= 3.0 and me["heartbeat"] >= me["started"]


@pytest.mark.dir_arrays  # file endpoints serve the data of dir arrays only
def test_endpoints_name_their_node_and_evacuate(
    api: Client, tmp_path: str, patterns: Patterns
) -> None:
    f1 = api.pe_create("f1", "file", path=os.path.join(tmp_path, "f1"))
    f2 = api.pe_create("f2", "file", path=os.path.join(tmp_path, "f2"))
    assert f1["node"] and f1["node"] == f2["node"] and f1["node_state"] == "live"
    api.host_add("h1")
    api.container_create("pool", "1G")
    v = api.vvol_create("pool", "8M", name="d")
    patterns.write(v["path"], "A", [0, 2 * CHUNK])
    sha = patterns.sha(v["path"])
    api.bind(["d"], "h1", pe="f1")
    (moved,) = api.pe_evacuate("f1", "f2")
    assert moved["ok"] and moved["handle"]["pe"] == "f2"
    assert patterns.sha(moved["handle"]["path"]) == sha
    assert [b["pe"] for b in api.bindings()] == ["f2"]
    assert api.pe_evacuate("f1", "f2") == []  # nothing left there
    with pytest.raises(InvalidInput, match="to itself"):
        api.pe_evacuate("f2", "f2")
    with pytest.raises(NotFound):
        api.pe_evacuate("f2", "nope")
    other = api.pe_create("f3", "file", path=os.path.join(tmp_path, "f3"), node="elsewhere")
    assert other["node"] == "elsewhere"  # another node's replica runs it
    api.unbind(["d"], "h1")
    report = api.audit()
    assert report["ok"], report["problems"]
