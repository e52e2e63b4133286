"""What one tenant's host can learn about another's, over the real TCP+TLS listener
with host tokens: names resolve inside the caller's tenant (both tenants have a
vvol "va"), another tenant's vvol is "not found" in exactly the words of one that
never existed, datastore figures count only the caller's vvols, no host view
carries an array path, a host outside every tenant creates nothing it could
never see, and an operation's progress answers its owner only.  Admin tokens
can be listed and revoked from the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.patterns import CHUNK, Patterns
from tests.tenancylab import Tls, tls_lab
from tests.tlsfixtures import make_certs
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.errors import (
    Conflict,
    Forbidden,
    InUse,
    NotFound,
    ReadOnly,
    Unauthorized,
    VvhostError,
)
from vvhost.faults import FAULT_ENV, FAULT_MARK

MiB = 1 << 20


@pytest.fixture
def tls(tmp_path: str, patterns: Patterns) -> Iterator[Tls]:
    with tls_lab(tmp_path, patterns) as lab:
        yield lab


def _refusal(call: Callable[[], object]) -> VvhostError:
    with pytest.raises(VvhostError) as err:
        call()
    return err.value


def _same_not_found(hidden: VvhostError, missing: VvhostError, hidden_ref: str, ref: str) -> None:
    """The error for "exists in another tenant" reads exactly as for "does not exist"."""
    assert isinstance(hidden, NotFound) and isinstance(missing, NotFound)
    assert hidden.message.replace(hidden_ref, "REF") == missing.message.replace(ref, "REF")
    assert hidden.fields.keys() == missing.fields.keys()


def _cli(tls: Tls, token: str, tmp_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    token_file = os.path.join(tmp_path, f"token-{uuid.uuid4().hex[:6]}")
    with open(token_file, "w") as fh:
        fh.write(token + "\n")
    base = [sys.executable, "-m", "vvhost", "--server", tls.url, "--token-file", token_file]
    return subprocess.run(
        [*base, "--ca", tls.ca, *args], capture_output=True, text=True, timeout=120
    )


def _unix_cli(tls: Tls, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vvhost", "--socket", tls.server.socket, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_names_resolve_inside_the_callers_tenant(tls: Tls, patterns: Patterns) -> None:
    a, b = tls.as_host("ha"), tls.as_host("hb")
    mine = b.vvol_create(None, "16M", name="va", datastore="ds-b")["id"]  # B's own "va"
    patterns.write(tls.admin.vvol(mine)["path"], "B", [0, CHUNK])
    assert a.vvol("va")["id"] == tls.ids["va"] and b.vvol("va")["id"] == mine
    # snapshot, bind and revert by name act on the caller's own vvol
    b_snap = b.vvol_snapshot("va", name="va@s1")["id"]
    assert tls.admin.vvol(b_snap)["parent"] == mine
    handle = b.bind_one("va", "hb", pe="files")
    assert b.bindings()[0]["vvol"] == mine and handle["uri"].startswith("file://")
    b.unbind(["va"], "hb")
    patterns.write(tls.admin.vvol(tls.ids["va"])["path"], "Z", [0])
    a.vvol_revert("va", "va@s1")
    patterns.check(tls.admin.vvol(tls.ids["va"])["path"], "A", [0, CHUNK])
    patterns.check(tls.admin.vvol(mine)["path"], "B", [0, CHUNK])
    assert a.bindings() == [] and {v["id"] for v in b.vvols()} == {tls.ids["vb"], mine, b_snap}
    # B learns nothing of A's objects: by id or by name, the same NotFound as a made-up one
    made_up = str(uuid.uuid4())
    for hidden, missing in ((tls.ids["va2"], made_up), ("va2", "no-such-vvol")):
        for call in (b.vvol, b.vvol_snapshot, lambda r: b.bind_one(r, "hb")):
            first = _refusal(lambda: call(hidden))  # noqa: B023
            second = _refusal(lambda: call(missing))  # noqa: B023
            _same_not_found(first, second, hidden, missing)
    for ref in (tls.ids["va2"], made_up):
        raw = httpx.get(
            f"{tls.url}/v1/vvols/{ref}",
            headers={"Authorization": f"Bearer {tls.tokens['hb']}"},
            verify=tls.ca,
        )
        assert raw.status_code == 404
        assert json.loads(raw.text.replace(ref, "REF")) == {
            "code": "not-found",
            "message": "vvol 'REF' not found",
            "fields": {"kind": "vvol", "ref": "REF"},
        }
    a.close()
    b.close()


def test_vvol_data_stays_in_its_tenant(tls: Tls, patterns: Patterns) -> None:
    """The data API reads and writes only the caller's own vvols, never a bound or
    read-only one, and a rotated token reads nothing."""
    a, b = tls.as_host("ha"), tls.as_host("hb")
    assert a.vvol_read("va", 0, CHUNK) == a.vvol_read(tls.ids["sa"], 0, CHUNK)
    patterns.check(tls.admin.vvol(tls.ids["va"])["path"], "A", [0, CHUNK])
    made_up = str(uuid.uuid4())
    for hidden in (tls.ids["va"], "va2"):  # B learns nothing: the same NotFound as none
        for call in (
            lambda r: b.vvol_read(r, 0, CHUNK),
            lambda r: b.vvol_write(r, 0, b"x" * 512),
            lambda r: b.vvol_write(r, 0, b"", zero=CHUNK),
        ):
            hidden_err = _refusal(lambda: call(hidden))  # noqa: B023
            _same_not_found(hidden_err, _refusal(lambda: call(made_up)), hidden, made_up)  # noqa: B023
    patterns.check(tls.admin.vvol(tls.ids["va"])["path"], "A", [0, CHUNK])
    with pytest.raises(ReadOnly):  # a snapshot is read-only
        a.vvol_write(tls.ids["sa"], 0, b"x" * 512)
    a.bind_one("va", "ha", pe="files")
    with pytest.raises(InUse):  # a host may be writing it
        a.vvol_write("va", 0, b"x" * 512)
    a.unbind(["va"], "ha")
    patterns.check(tls.admin.vvol(tls.ids["va"])["path"], "A", [0, CHUNK])
    tls.admin.host_token_rotate("ha")
    with pytest.raises(Unauthorized):  # the old token is stale
        a.vvol_read("va", 0, CHUNK)
    a.close()
    b.close()


def _paths(tls: Tls) -> list[str]:
    return [arr["path"] for arr in tls.admin.arrays()] + [tls.server.state_dir]


def test_host_views_carry_no_array_paths(tls: Tls, tmp_path: str) -> None:
    a = tls.as_host("ha")
    views: dict[str, Any] = {
        "create": a.vvol_create(None, "16M", name="v3", datastore="ds-a"),
        "show": a.vvol("va"),
        "list": a.vvols(),
        "snapshot": a.vvol_snapshot("v3", name="v3@1"),
        "clone": a.vvol_clone("v3@1", linked=True, name="v3c"),
        "extend": a.vvol_extend("v3", "32M"),
        "meta": a.vvol_meta("v3", ["k=v"]),
        "datastore": a.datastore("ds-a"),
        "datastores": a.datastores(),
        "resolve": a.datastore_resolve("ds-a"),
    }
    text = json.dumps(views)
    for path in _paths(tls):
        assert path not in text
    assert all("path" not in views[k] for k in ("create", "show", "snapshot", "clone"))
    assert [x["name"] for x in views["resolve"]["arrays"]] == ["local"]
    for args in (("vvol", "show", "va", "--json"), ("datastore", "resolve", "ds-a")):
        out = _cli(tls, tls.tokens["ha"], tmp_path, *args)
        assert out.returncode == 0, out.stderr
        assert not any(path in out.stdout for path in _paths(tls))
    # an admin still sees where the data is
    assert tls.admin.vvol("va")["path"].startswith(tls.admin.arrays()[0]["path"])
    assert "path" in tls.admin.datastore_resolve("ds-a", host="ha")["arrays"][0]
    a.close()


def test_datastore_figures_count_only_the_callers_vvols(tls: Tls) -> None:
    tls.admin.datastore_create("ds-shared", "1G", ["shared"])  # no tenant: both may use it
    a, b = tls.as_host("ha"), tls.as_host("hb")
    for name in ("a1", "a2"):
        a.vvol_create(None, "16M", name=name, datastore="ds-shared")
    b.vvol_create(None, "32M", name="b1", datastore="ds-shared")
    seen_by_b = b.datastore("ds-shared")
    assert (seen_by_b["vvols"], seen_by_b["provisioned"]) == (1, 32 * MiB)
    assert seen_by_b["free"] == (1 << 30) - 64 * MiB  # the room left is the datastore's
    listed = {d["name"]: d for d in b.datastores()}
    assert (listed["ds-shared"]["vvols"], listed["ds-shared"]["provisioned"]) == (1, 32 * MiB)
    assert (listed["ds-b"]["vvols"], listed["ds-b"]["provisioned"]) == (1, 16 * MiB)
    seen_by_a = a.datastore("ds-shared")
    assert (seen_by_a["vvols"], seen_by_a["provisioned"]) == (2, 32 * MiB)
    full = tls.admin.datastore("ds-shared")
    assert (full["vvols"], full["provisioned"]) == (3, 64 * MiB)
    a.close()
    b.close()


def test_host_outside_every_tenant_creates_nothing(tls: Tls, tmp_path: str) -> None:
    token = tls.admin.host_add("lone", "iqn.2026-11.test:lone")["token"]
    lone = Client.https(tls.url, token, tls.ca)
    before = {v["id"] for v in tls.admin.vvols()}
    provisioned = tls.admin.container("shared")["provisioned"]
    for call in (
        lambda: lone.vvol_create("shared", "16M", name="orphan"),
        lambda: lone.vvol_create(None, "16M", name="orphan", datastore="ds-a"),
    ):
        err = _refusal(call)
        assert isinstance(err, (Forbidden, NotFound)), err
    err = _refusal(lambda: lone.vvol_create("shared", "16M", name="orphan"))
    assert isinstance(err, Forbidden) and "belongs to no tenant" in err.message
    out = _cli(tls, token, tmp_path, "vvol", "create", "--container", "shared", "--size", "16M")
    assert out.returncode == 4 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("vvhost: error: host lone belongs to no tenant")
    assert {v["id"] for v in tls.admin.vvols()} == before
    assert tls.admin.container("shared")["provisioned"] == provisioned
    lone.close()


def test_tenant_in_use_and_empty_names_from_the_cli(tls: Tls) -> None:
    out = _unix_cli(tls, "tenant", "delete", "alpha")
    assert out.returncode == 4 and out.stderr.count("\n") == 1, out.stderr
    assert "hosts ha" in out.stderr and "vvols va" in out.stderr
    assert [t["name"] for t in tls.admin.tenants()] == ["alpha", "beta"]
    out = _unix_cli(tls, "vvol", "show", "")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("vvhost: error: a name or id is empty")
    out = _unix_cli(tls, "container", "create", "c", "--capacity", "1G", "--tenant", "ghost")
    assert out.returncode == 3 and out.stderr == "vvhost: error: tenant 'ghost' not found\n"
    out = _unix_cli(tls, "container", "delete", "shared")
    assert out.returncode == 4 and "datastores ds-a, ds-b map it" in out.stderr


def _https(tls: Tls, token: str) -> contextlib.closing[Client]:
    """A TLS client, closed after use (an open connection holds up the server's stop)."""
    return contextlib.closing(Client.https(tls.url, token, tls.ca))


def test_admin_tokens_are_listed_and_revoked(tls: Tls, tmp_path: str) -> None:
    ops = tls.admin.admin_token("ops")["token"]
    with _https(tls, ops) as client:
        assert client.health()["caller"] == "ops"
    out = _unix_cli(tls, "token", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == ["admin", "ops"]
    assert set(rows[0]) == {"name", "created", "last_used"}
    assert ops not in out.stdout and tls.tokens["admin"] not in out.stdout
    assert {r["name"]: r["last_used"] for r in rows}["ops"] is not None
    out = _cli(tls, ops, tmp_path, "token", "list")  # over TLS with an admin token
    assert out.returncode == 0 and out.stdout.split("\n")[0].split() == [
        "NAME",
        "CREATED",
        "LAST_USED",
    ]
    # a host token may neither list nor revoke
    out = _cli(tls, tls.tokens["ha"], tmp_path, "token", "revoke", "ops")
    assert out.returncode == 4 and out.stderr.count("\n") == 1
    out = _unix_cli(tls, "token", "revoke", "ops")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    with _https(tls, ops) as client, pytest.raises(Unauthorized):
        client.health()
    out = _cli(tls, ops, tmp_path, "vvol", "list")
    assert out.returncode == 7 and out.stderr == "vvhost: error: the token is not valid\n"
    out = _unix_cli(tls, "token", "revoke", "ops")
    assert out.returncode == 3 and out.stderr == "vvhost: error: admin token 'ops' not found\n"
    # the last one may go too (root on the unix socket stays admin), with a warning
    out = _cli(tls, tls.tokens["admin"], tmp_path, "token", "revoke", "admin", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["admin_tokens_left"] == 0
    assert out.stderr.startswith("vvhost: warning: no admin token is left")
    with _https(tls, tls.tokens["admin"]) as client, pytest.raises(Unauthorized):
        client.vvols()
    assert tls.admin.admin_tokens() == [] and len(tls.admin.vvols()) == 4


# -- operation progress: a control plane that stops inside a host's operation --------------
@pytest.fixture
def paused(tmp_path: str) -> Iterator[tuple[ServerProcess, str, dict[str, str], str]]:
    """A TLS control plane that stops at create:file-created (the request waits there)."""
    certs = make_certs(os.path.join(tmp_path, "tls"))
    port = free_port()
    state = os.path.join(tmp_path, "state")
    server = ServerProcess(
        state,
        os.path.join(tmp_path, "s.sock"),
        env={FAULT_ENV: "create:file-created"},
        args=["--listen", f"127.0.0.1:{port}", "--tls-cert", certs.cert, "--tls-key", certs.key],
    ).start()
    try:
        admin = server.client()
        admin.tenant_create("alpha")
        admin.tenant_create("beta")
        tokens = {
            h: admin.host_add(h, tenant=t)["token"] for h, t in (("ha", "alpha"), ("hb", "beta"))
        }
        admin.container_create("shared", "1G")
        admin.close()
        yield server, f"https://127.0.0.1:{port}", tokens, certs.ca
    finally:
        server.kill()
        server.stop()


def test_operation_progress_answers_only_its_owner(
    paused: tuple[ServerProcess, str, dict[str, str], str],
) -> None:
    server, url, tokens, ca = paused
    a, b = Client.https(url, tokens["ha"], ca), Client.https(url, tokens["hb"], ca)
    op = str(uuid.uuid4())
    worker = threading.Thread(
        target=lambda: _refusal(lambda: a.vvol_create("shared", "16M", name="x", op_id=op)),
        daemon=True,
    )
    worker.start()
    mark = os.path.join(server.state_dir, FAULT_MARK)
    deadline = time.monotonic() + 60
    while not os.path.exists(mark):
        assert time.monotonic() < deadline, "fault point never reached"
        time.sleep(0.05)
    assert a.operation(op)["op"] == "create"  # the owner sees it
    admin = server.client()
    assert admin.operation(op)["step"] == "begin"
    made_up = str(uuid.uuid4())
    theirs, nobodys = _refusal(lambda: b.operation(op)), _refusal(lambda: b.operation(made_up))
    _same_not_found(theirs, nobodys, op, made_up)
    with pytest.raises(Conflict):  # nor can B take the id over
        b.vvol_create("shared", "16M", name="y", op_id=op)
    assert [v["name"] for v in admin.vvols()] == ["x"]
    server.kill()
    worker.join(30)
    for c in (a, b, admin):
        c.close()
