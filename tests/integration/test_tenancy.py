"""Tenants and the remote API over real TLS on loopback: a tenant-B host token
tries every reading and mutating call on tenant-A objects (in the same container)
and gets 403 or 404 each time; tenant A's data stays as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.patterns import CHUNK, Patterns
from tests.tlsfixtures import make_certs
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.errors import Unauthorized, VvhostError


@dataclass
class Tls:
    server: ServerProcess
    admin: Client  # over the unix socket
    url: str
    ca: str
    tokens: dict[str, str]
    ids: dict[str, str]

    def as_host(self, name: str) -> Client:
        return Client.https(self.url, self.tokens[name], self.ca)


@pytest.fixture
def tls(tmp_path: str, patterns: Patterns) -> Iterator[Tls]:
    certs = make_certs(os.path.join(tmp_path, "tls"))
    port = free_port()
    server = ServerProcess(
        os.path.join(tmp_path, "state"),
        os.path.join(tmp_path, "s.sock"),
        private_tgtd=True,
        args=["--listen", f"127.0.0.1:{port}", "--tls-cert", certs.cert, "--tls-key", certs.key],
    ).start()
    admin = server.client()
    try:
        admin.tenant_create("alpha")
        admin.tenant_create("beta")
        tokens = {
            h: admin.host_add(h, f"iqn.2026-11.test:{h}", tenant)["token"]
            for h, tenant in (("ha", "alpha"), ("hb", "beta"))
        }
        tokens["admin"] = admin.admin_token()["token"]
        admin.container_create("shared", "4G")  # both tenants' vvols live in one container
        admin.container_create("other", "1G")
        admin.pe_create("files", "file", path=os.path.join(tmp_path, "nfs"))
        ds_a = admin.datastore_create("ds-a", "1G", ["shared"], tenant="alpha")["id"]
        ds_b = admin.datastore_create("ds-b", "1G", ["shared"], tenant="beta")["id"]
        t = Tls(
            server,
            admin,
            f"https://127.0.0.1:{port}",
            certs.ca,
            tokens,
            {"ds-a": ds_a, "ds-b": ds_b},
        )
        a = t.as_host("ha")
        va = a.vvol_create(None, "16M", name="va", datastore="ds-a")
        patterns.write(admin.vvol(va["id"])["path"], "A", [0, CHUNK])
        t.ids.update(
            va=va["id"],
            sa=a.vvol_snapshot("va", name="va@s1")["id"],
            va2=a.vvol_create(None, "16M", name="va2", datastore="ds-a")["id"],
        )
        a.close()
        b = t.as_host("hb")
        t.ids["vb"] = b.vvol_create(None, "16M", name="vb", datastore="ds-b")["id"]
        b.close()
        yield t
    finally:
        admin.close()
        server.stop()


def test_tenant_b_cannot_touch_tenant_a(tls: Tls, patterns: Patterns) -> None:
    ids = tls.ids
    va, sa, va2, vb = ids["va"], ids["sa"], ids["va2"], ids["vb"]
    before = patterns.sha(tls.admin.vvol(va)["path"])
    b = tls.as_host("hb")
    attempts: dict[str, Callable[[], object]] = {
        "show": lambda: b.vvol(va),
        "show by name": lambda: b.vvol("va"),
        "delete": lambda: b.vvol_delete(va),
        "extend": lambda: b.vvol_extend(va, "32M"),
        "meta": lambda: b.vvol_meta(va, ["owner=beta"]),
        "snapshot": lambda: b.vvol_snapshot(va),
        "clone": lambda: b.vvol_clone(va),
        "clone snapshot": lambda: b.vvol_clone(sa, linked=True),
        "revert": lambda: b.vvol_revert(va, sa),
        "revert own to theirs": lambda: b.vvol_revert(vb, sa),
        "move": lambda: b.vvol_move(va, "other"),
        "bitmap": lambda: b.vvol_bitmap(va),
        "bitmap base": lambda: b.vvol_bitmap(vb, base=va),
        "copy-diffs from": lambda: b.vvol_copy_diffs(va, sa, vb),
        "copy-diffs into": lambda: b.vvol_copy_diffs(vb, vb, va2),
        "bind for self": lambda: b.bind_one(va, "hb"),
        "bind for them": lambda: b.bind_one(vb, "ha"),
        "unbind": lambda: b.unbind([va], "hb"),
        "rebind": lambda: b.rebind(va, "hb", "files"),
        "bindings of them": lambda: b.bindings(vvol=va),
        "create in their datastore": lambda: b.vvol_create(None, "1M", datastore="ds-a"),
        "datastore show": lambda: b.datastore("ds-a"),
        "datastore resolve": lambda: b.datastore_resolve(ids["ds-a"]),
        "resolve as them": lambda: b.datastore_resolve(ids["ds-b"], host="ha"),
        "datastore create": lambda: b.datastore_create("x", "1M"),
        "datastore extend": lambda: b.datastore_extend("ds-a", "2G"),
        "datastore delete": lambda: b.datastore_delete("ds-a"),
        "arrays": lambda: b.arrays(),
        "array add": lambda: b.array_add("x", "dir", "/tmp/x"),
        "containers": lambda: b.containers(),
        "container create": lambda: b.container_create("x", "1G"),
        "container delete": lambda: b.container_delete("shared"),
        "pes": lambda: b.pes(),
        "pe delete": lambda: b.pe_delete("files"),
        "hosts": lambda: b.hosts(),
        "host show them": lambda: b.host("ha"),
        "host remove": lambda: b.host_remove("ha"),
        "token rotate": lambda: b.host_token_rotate("ha"),
        "tenants": lambda: b.tenants(),
        "tenant create": lambda: b.tenant_create("gamma"),
        "admin token": lambda: b.admin_token("sneaky"),
        "audit": lambda: b.audit(),
    }
    for what, attempt in attempts.items():
        with pytest.raises(VvhostError) as err:
            attempt()
        assert err.value.code in ("not-found", "forbidden"), (what, err.value.code, err.value)
    # listings show only tenant B's objects
    assert {v["id"] for v in b.vvols()} == {vb}
    assert [d["name"] for d in b.datastores()] == ["ds-b"]
    assert b.bindings() == []
    b.close()
    # nothing of tenant A changed
    assert patterns.sha(tls.admin.vvol(va)["path"]) == before
    assert tls.admin.vvol(va)["generation"] == 1 and tls.admin.vvol(va)["metadata"] == {}
    assert {v["name"] for v in tls.admin.vvols()} == {"va", "va@s1", "va2", "vb"}
    assert tls.admin.audit()["ok"]


def test_tenant_a_works_over_tls(tls: Tls, patterns: Patterns) -> None:
    a = tls.as_host("ha")
    patterns.write(tls.admin.vvol("va")["path"], "B", [0])
    h = a.bind_one("va", "ha", pe="files")
    assert h["uri"].startswith("file://") and a.bindings()[0]["vvol"] == tls.ids["va"]
    a.unbind(["va"], "ha")
    a.vvol_revert("va", "va@s1")
    patterns.check(tls.admin.vvol("va")["path"], "A", [0, CHUNK])
    clone = a.vvol_clone("va@s1", linked=True, name="va-clone")
    assert clone["tenant"] == "alpha" and clone["datastore"] == tls.ids["ds-a"]
    resolved = a.datastore_resolve("ds-a")
    assert resolved["datastore"] == tls.ids["ds-a"] and [p["name"] for p in resolved["pes"]] == [
        "files"
    ]
    assert {v["name"] for v in a.vvols()} == {"va", "va@s1", "va2", "va-clone"}
    a.close()


def test_tokens_and_tls_are_required(tls: Tls) -> None:
    with pytest.raises(Unauthorized):
        Client.https(tls.url, "not-a-token", tls.ca).vvols()
    raw = httpx.get(f"{tls.url}/v1/vvols", verify=tls.ca)
    assert raw.status_code == 401 and raw.json()["code"] == "unauthorized"
    with pytest.raises(VvhostError):  # plain HTTP to the TLS port does not work
        Client(httpx.Client(base_url=tls.url.replace("https", "http")), "plain").vvols()
    old = tls.tokens["ha"]
    new = tls.admin.host_token_rotate("ha")["token"]
    with pytest.raises(Unauthorized):
        Client.https(tls.url, old, tls.ca).vvols()
    assert Client.https(tls.url, new, tls.ca).vvol("va")["name"] == "va"
    admin = Client.https(tls.url, tls.tokens["admin"], tls.ca)
    assert len(admin.vvols()) == 4 and admin.audit()["ok"]
    # the unix socket is for root only
    assert os.stat(tls.server.socket).st_mode & 0o777 == 0o600


def test_cli_over_tls(tls: Tls, tmp_path: str) -> None:
    token_file = os.path.join(tmp_path, "token")
    with open(token_file, "w") as fh:
        fh.write(tls.tokens["ha"] + "\n")
    base = [
        sys.executable,
        "-m",
        "vvhost",
        "--server",
        tls.url,
        "--token-file",
        token_file,
        "--ca",
        tls.ca,
    ]
    out = subprocess.run([*base, "vvol", "list", "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and '"va"' in out.stdout and '"vb"' not in out.stdout
    out = subprocess.run([*base, "container", "list"], capture_output=True, text=True)
    assert out.returncode == 4 and out.stderr.startswith("vvhost: error: host ha may not")
    out = subprocess.run([*base, "datastore", "resolve", "ds-a"], capture_output=True, text=True)
    assert out.returncode == 0 and tls.ids["ds-a"] in out.stdout
