"""Tenants and the remote API over real TLS on loopback: a tenant-B host token
tries every reading and mutating call on tenant-A objects (in the same container)
and gets 403 or 404 each time; tenant A's data stays as it was."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.patterns import CHUNK, Patterns
from tests.tenancylab import Tls, tls_lab
from vvhost.client import Client
from vvhost.errors import Unauthorized, VvhostError


@pytest.fixture
def tls(tmp_path: str, patterns: Patterns) -> Iterator[Tls]:
    with tls_lab(tmp_path, patterns) as lab:
        yield lab


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


def _closing(client: Client) -> contextlib.closing[Client]:
    """Closed after use: an open connection holds up the server's stop."""
    return contextlib.closing(client)


def test_tokens_and_tls_are_required(tls: Tls) -> None:
    with _closing(Client.https(tls.url, "not-a-token", tls.ca)) as c, pytest.raises(Unauthorized):
        c.vvols()
    raw = httpx.get(f"{tls.url}/v1/vvols", verify=tls.ca)
    assert raw.status_code == 401 and raw.json()["code"] == "unauthorized"
    plain = Client(httpx.Client(base_url=tls.url.replace("https", "http")), "plain")
    with _closing(plain), pytest.raises(VvhostError):  # plain HTTP to the TLS port does not work
        plain.vvols()
    old = tls.tokens["ha"]
    new = tls.admin.host_token_rotate("ha")["token"]
    with _closing(Client.https(tls.url, old, tls.ca)) as c, pytest.raises(Unauthorized):
        c.vvols()
    with _closing(Client.https(tls.url, new, tls.ca)) as c:
        assert c.vvol("va")["name"] == "va"
    with _closing(Client.https(tls.url, tls.tokens["admin"], tls.ca)) as admin:
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
