"""Fencing at the API and on file endpoints, against a real ``vvhost serve`` on
TCP+TLS with per-host tokens: a fenced host's token gets nothing, its bindings are
fenced and its file entries withdrawn, its VM leases released; recovery elsewhere
is refused until it is fenced; unfence is explicit and drops the fenced bindings.
A host that stops calling in is reported unreachable, once."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.patterns import Patterns
from tests.runner import run
from tests.tlsfixtures import start_tls_plane
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.errors import Conflict, Forbidden, InvalidInput

MiB = 1 << 20


@dataclass
class Plane:
    server: ServerProcess
    admin: Client
    url: str
    ca: str
    tokens: dict[str, str]

    def as_host(self, name: str) -> Client:
        return Client.https(self.url, self.tokens[name], self.ca)


@pytest.fixture
def plane(tmp_path: str) -> Iterator[Plane]:
    tls = start_tls_plane(tmp_path, env={"VVHOST_UNREACHABLE_AFTER": "2"})
    server = tls.server
    admin = server.client()
    try:
        admin.tenant_create("alpha")
        tokens = {
            h: admin.host_add(h, f"iqn.2026-11.test:{h}", "alpha")["token"] for h in ("h1", "h2")
        }
        admin.container_create("pool", "1G")
        admin.pe_create("files", "file", path=os.path.join(tmp_path, "nfs"))
        yield Plane(server, admin, tls.url, tls.ca, tokens)
    finally:
        admin.close()
        server.stop()


def kinds(api: Client) -> list[str]:
    return [e["kind"] for e in api.events(limit=1000)["events"]]


def test_fenced_host_gets_nothing_until_unfenced(plane: Plane, patterns: Patterns) -> None:
    admin = plane.admin
    h1 = plane.as_host("h1")
    config = h1.vvol_create("pool", "1M", type="config", name="vm1.config")["id"]
    disk = h1.vvol_create("pool", "8M", name="vm1.vda")["id"]
    patterns.write(admin.vvol(disk)["path"], "A", [0])
    handle = h1.bind_one(disk, "h1", "files")
    assert os.path.exists(handle["path"])
    h1.lease_acquire(config, "h1", "vm-start", os.getpid(), 600)
    h2 = plane.as_host("h2")
    with pytest.raises(Conflict) as err:  # h1 is alive: the VM may run there
        h2.recover_check("h2", [config, disk])
    assert "not fenced" in err.value.message

    out = run(sys.executable, "-m", "vvhost", "--socket", plane.server.socket, "host", "fence",
              "h1", "--json")  # fmt: skip
    assert '"bindings": 1' in out.stdout and config in out.stdout  # the lease it held
    assert not os.path.exists(handle["path"])  # the file endpoint withdrew the entry
    bindings = admin.bindings(host="h1")
    assert [(b["vvol"], b["state"]) for b in bindings] == [(disk, "fenced")]
    assert admin.lease_show(config)["lease"] is None
    for call in (
        lambda: h1.vvols(),
        lambda: h1.bind_one(disk, "h1", "files"),
        lambda: h1.host("h1"),
        lambda: h1.host_nbd_credentials("h1"),
        lambda: h1.lease_acquire(config, "h1", "vm-start", 1, 60),
    ):
        with pytest.raises(Forbidden) as denied:
            call()
        assert "host h1 is fenced" in denied.value.message
    again = admin.host_fence("h1")  # idempotent: nothing more to cut
    assert again["bindings"] == 0 and again["fenced"] is not None
    listed = {h["name"]: h for h in admin.hosts()}
    assert listed["h1"]["state"] == "fenced"
    health = [i for i in admin.health_report()["items"] if i["kind"] == "host"]
    assert [(i["name"], i["detail"].split(":")[0]) for i in health] == [("h1", "fenced")]
    assert admin.host("h1")["state"] == "fenced" and admin.host("h1")["bindings"] == 1

    # another host may now start the VM; its data is still there
    assert h2.recover_check("h2", [config, disk])["fenced_hosts"] == ["h1"]
    moved = h2.bind_one(disk, "h2", "files")
    patterns.check(moved["path"], "A", [0])
    assert h2.lease_acquire(config, "h2", "vm-start", os.getpid(), 600)["host"] == "h2"

    with pytest.raises(InvalidInput):
        admin.host_unfence("h2")
    back = admin.host_unfence("h1")
    assert back["bindings_dropped"] == 1
    assert admin.bindings(host="h1") == []
    assert [v["id"] for v in h1.vvols() if v["id"] == disk] == [disk]  # the token works
    with pytest.raises(Conflict):  # h2 runs the VM now: h1 may not take it back
        h1.recover_check("h1", [config, disk])
    seen = kinds(admin)
    assert seen.count("host.fenced") == 2 and seen.count("host.unfenced") == 1
    assert admin.audit()["ok"]
    for c in (h1, h2):
        c.close()


def test_silent_host_is_reported_unreachable_once(plane: Plane) -> None:
    admin = plane.admin
    h1 = plane.as_host("h1")
    h1.vvols()
    listed = {h["name"]: h for h in admin.hosts()}
    assert listed["h1"]["state"] == "ok" and listed["h1"]["last_contact"] is not None
    assert listed["h2"]["state"] == "new" and listed["h2"]["last_contact"] is None
    deadline = time.monotonic() + 20
    while "host.unreachable" not in kinds(admin):
        assert time.monotonic() < deadline, "no host.unreachable event"
        time.sleep(0.3)
    assert {h["name"]: h["state"] for h in admin.hosts()}["h1"] == "unreachable"
    items = [i for i in admin.health_report()["items"] if i["kind"] == "host"]
    assert [(i["name"], i["status"]) for i in items] == [("h1", "warning")]
    assert "host fence h1" in items[0]["advice"]
    time.sleep(1.5)  # later rounds do not repeat it
    events = [e for e in admin.events(limit=1000)["events"] if e["kind"] == "host.unreachable"]
    assert len(events) == 1 and events[0]["fields"]["host"] == "h1"
    h1.vvols()  # calling in again makes it reachable
    assert {h["name"]: h["state"] for h in admin.hosts()}["h1"] == "ok"
    h1.close()
