"""Two ``vvhost serve`` replicas on one private PostgreSQL, both on TCP+TLS: the CLI
and a host's libvirt hook are given both URLs, the first replica is killed with
SIGKILL (by PID), and both keep working through the second; a URL list that names
only dead replicas ends in one line and exit code 7."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import pytest

from tests.patterns import Patterns
from tests.tlsfixtures import make_certs
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
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

    # the first replica dies as a crash would
    pid = first.proc.pid if first.proc else 0
    first.kill()
    assert first.proc is not None and first.proc.poll() == -9
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

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
