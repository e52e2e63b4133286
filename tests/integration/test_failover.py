"""Two ``vvhost serve`` replicas on one private PostgreSQL, both on TCP+TLS: the CLI
and a host's libvirt hook are given both URLs, the first replica is killed with
SIGKILL (by PID), and both keep working through the second; a URL list that names
only dead replicas ends in one line and exit code 7."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import httpx
import pytest

from tests.patterns import Patterns
from tests.tlsfixtures import make_certs
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.errors import ReplicaUnavailable, Unreachable
from vvhost.host import domainxml as dx
from vvhost.host.config import HostConfig

MiB = 1 << 20


@dataclass
class Replicas:
    servers: list[ServerProcess]
    urls: list[str]
    ca: str
    admin_token: str  # a file
    host_token: str  # a file, host h1's

    def cli(self, *args: str, servers: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "vvhost", "--token-file", self.admin_token, "--ca", self.ca]
        argv += ["--server", servers or ",".join(self.urls), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _secret(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(text + "\n")
    return path


@pytest.fixture
def replicas(tmp_path: str, pg_url: str) -> Iterator[Replicas]:
    certs = make_certs(os.path.join(tmp_path, "api-tls"))
    servers: list[ServerProcess] = []
    urls: list[str] = []
    try:
        for name in ("a", "b"):  # one after the other: the first one migrates the catalog
            port = free_port()
            args = ["--db-url", pg_url, "--listen", f"127.0.0.1:{port}"]
            args += ["--tls-cert", certs.cert, "--tls-key", certs.key]
            state = os.path.join(tmp_path, f"replica-{name}")
            servers.append(ServerProcess(state, os.path.join(tmp_path, f"{name}.sock"), args=args))
            servers[-1].start()
            urls.append(f"https://127.0.0.1:{port}")
        admin = servers[0].client()
        try:
            admin.tenant_create("alpha")
            host_token = admin.host_add("h1", "iqn.2026-12.test:h1", "alpha")["token"]
            admin_token = admin.admin_token("ops")["token"]
            admin.container_create("pool", "1G", tenant="alpha")
            admin.pe_create("files", "file", path=os.path.join(tmp_path, "nfs"))
        finally:
            admin.close()
        yield Replicas(
            servers,
            urls,
            certs.ca,
            _secret(tmp_path, "admin.token", admin_token),
            _secret(tmp_path, "h1.token", host_token),
        )
    finally:
        for server in servers:
            server.stop()


def _hook(conf: str, op: str, xml: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "vvhost", "hook", "qemu", "--host-conf", conf]
    argv += ["vm1", op, "begin", "-"]
    return subprocess.run(argv, input=xml, capture_output=True, text=True, timeout=120)


def test_cli_and_hook_fail_over_to_the_second_replica(
    replicas: Replicas, tmp_path: str, patterns: Patterns
) -> None:
    first, second = replicas.servers
    # both replicas answer, from the one catalog
    made = replicas.cli(
        "vvol", "create", "--container", "pool", "--size", "8M", "--name", "vm1.vda"
    )
    assert made.returncode == 0, made.stderr
    for url in replicas.urls:
        listed = replicas.cli("vvol", "list", servers=url)
        assert listed.returncode == 0 and "vm1.vda" in listed.stdout, listed.stderr
    vid = made.stdout.strip()
    with open(replicas.admin_token, encoding="utf-8") as fh:
        token = fh.read().strip()
    with closing(Client.https(replicas.urls[1], token, replicas.ca)) as b:
        path = b.vvol(vid)["path"]
    patterns.write(path, "A", [0, 4 * MiB])

    conf = os.path.join(tmp_path, "host.conf")
    HostConfig(
        name="h1",
        server=", ".join(replicas.urls),
        token_file=replicas.host_token,
        ca=replicas.ca,
        pe="files",
    ).save(conf)
    meta = dx.VmMeta(datastore=None, config=None, disks={"vda": vid}, pe="files")
    xml = dx.tostring(dx.new_domain("vm1", 64, 1, meta))

    # a client that has a kept-alive connection to the first replica
    held = Client.connect(replicas.urls, token, replicas.ca)
    assert held.health()["ok"] and held.address == replicas.urls[0]

    # the first replica dies as a crash would
    pid = first.proc.pid if first.proc else 0
    first.kill()
    assert first.proc is not None and first.proc.poll() == -9
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    # the held client's pool drops the connection the dead replica closed: even a
    # write is refused by the first URL (never sent) and goes to the second
    try:
        made_held = held.vvol_create("pool", "1M", name="held-client")
        assert held.address == replicas.urls[1]
        assert [t.split(": ", 1)[0] for t in held.conn.tried] == [replicas.urls[0]]
    finally:
        held.close()

    # the CLI: a read and a write, the dead replica first in the list
    started = time.monotonic()
    shown = replicas.cli("vvol", "show", vid, "--json")
    assert shown.returncode == 0 and vid in shown.stdout, shown.stderr
    assert time.monotonic() - started < 30
    second_vvol = replicas.cli(
        "vvol", "create", "--container", "pool", "--size", "4M", "--name", "after.kill"
    )
    assert second_vvol.returncode == 0, second_vvol.stderr
    # the host's hook binds through the second replica (dead one first in host.conf)
    bound = _hook(conf, "migrate", xml)
    assert bound.returncode == 0, bound.stderr
    source = dx.disk_source(dx.parse(bound.stdout), "vda")
    assert source is not None
    handle_path = source.get("file") or source.get("dev") or ""
    assert os.path.exists(handle_path), bound.stdout
    patterns.check(handle_path, "A", [0, 4 * MiB])  # the data, through the new binding
    check = replicas.cli("binding", "list", "--host", "h1", "--json", servers=replicas.urls[1])
    assert check.returncode == 0 and vid in check.stdout, check.stderr
    released = _hook(conf, "release", xml)
    assert released.returncode == 0, released.stderr
    check = replicas.cli("binding", "list", "--host", "h1", "--json")
    assert check.returncode == 0 and vid not in check.stdout, check.stderr
    listed = replicas.cli("vvol", "show", made_held["id"], "--json")
    assert listed.returncode == 0 and "held-client" in listed.stdout, listed.stderr
    audit = replicas.cli("audit", "--json")
    assert audit.returncode == 0 and '"ok": true' in audit.stdout, audit.stdout + audit.stderr

    # a stale list: only dead replicas (the killed one and a port nobody listens on)
    stale = f"{replicas.urls[0]},https://127.0.0.1:{free_port()}"
    gone = replicas.cli("vvol", "list", servers=stale)
    assert gone.returncode == 7
    lines = gone.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in gone.stderr, gone.stderr
    assert lines[0].startswith(
        f"vvhost: error: cannot reach the control plane at any of {replicas.urls[0]}, "
    )
    # the hook with only dead replicas fails in one line too, and binds nothing
    HostConfig(
        name="h1", server=stale, token_file=replicas.host_token, ca=replicas.ca, pe="files"
    ).save(conf)
    failed = _hook(conf, "migrate", xml)
    assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1
    assert "cannot reach the control plane at any of" in failed.stderr
    assert second.proc is not None and second.proc.poll() is None


def test_a_frozen_replica_a_write_is_not_sent_twice(replicas: Replicas) -> None:
    """SIGSTOP the first replica: a new connection to it opens (the kernel answers) but
    its TLS handshake times out, so requests go to the second; a POST already sent to
    it on an open connection times out and is NOT sent again (the frozen replica holds
    it and might carry it out when it runs again)."""
    first, _second = replicas.servers
    with open(replicas.admin_token, encoding="utf-8") as fh:
        token = fh.read().strip()
    short = httpx.Timeout(connect=2.0, read=4.0, write=4.0, pool=2.0)
    api = Client.connect(replicas.urls, token, replicas.ca, short)
    only_b = Client.connect(replicas.urls[1:], token, replicas.ca)
    assert first.proc is not None
    pid = first.proc.pid
    try:
        assert api.health()["ok"] and api.address == replicas.urls[0]  # a live connection
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(Unreachable) as err:
            api.vvol_create("pool", "1M", name="sent-once")
        assert "may have been carried out" in str(err.value)
        assert err.value.exit_code == 7
        assert not [v for v in only_b.vvols() if v["name"] == "sent-once"]
        # a read goes on to the second replica (the handshake with the frozen one times out)
        started = time.monotonic()
        assert api.health()["ok"] and api.address == replicas.urls[1]
        assert time.monotonic() - started < 15
        assert any(t.startswith(replicas.urls[0]) for t in api.conn.tried)
        # so does a new client's write: nothing of it reached the frozen replica
        fresh = Client.connect(replicas.urls, token, replicas.ca, short)
        try:
            made = fresh.vvol_create("pool", "1M", name="via-second")
            assert fresh.address == replicas.urls[1]
        finally:
            fresh.close()
        assert only_b.vvol(made["id"])["name"] == "via-second"
    finally:
        os.kill(pid, signal.SIGCONT)
    # the frozen replica runs again, past its lease: the second replica took over, so
    # it refuses every request up front (a client with both URLs goes on to the next);
    # whatever it made of the request it had received (uvicorn drops a request whose
    # client left before its body was read), the vvol exists at most once: the client
    # never sent it anywhere else
    only_a = Client.connect(replicas.urls[:1], token, replicas.ca)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                only_a.health()
            except ReplicaUnavailable as refused:
                assert "lost its lease" in str(refused)
                break
            except Unreachable:
                pass
            assert time.monotonic() < deadline, "the resumed replica kept answering"
            time.sleep(0.5)
        assert len([v for v in only_b.vvols() if v["name"] == "sent-once"]) <= 1
        assert [v["name"] for v in only_b.vvols()].count("via-second") == 1
    finally:
        only_a.close()
        api.close()
        only_b.close()
