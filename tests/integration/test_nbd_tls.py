"""NBD over TCP needs TLS and the host's own certificate: real qemu-storage-daemons
per host, real clients (nbdinfo, qemu-io, qemu-img), the remote API with host tokens.

Hostile cases: a client with no credentials, host B's certificate against host A's
daemon, a certificate left from before a token rotation or a host removal, and
host B's token asking for host A's credentials."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.patterns import CHUNK, Patterns
from tests.tlsfixtures import start_tls_plane
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.host.vms import raw_source, raw_target

MiB = 1 << 20
OFFSETS = [0, 3 * CHUNK, 5 * MiB]


@dataclass
class Lab:
    server: ServerProcess
    admin: Client
    url: str
    ca: str
    tmp: str
    tokens: dict[str, str]

    def cli(self, *args: str, host: str | None = None) -> subprocess.CompletedProcess[str]:
        """``vvhost`` as root on the unix socket, or as ``host`` over HTTPS with its token."""
        if host is None:
            base = ["--socket", self.server.socket]
        else:
            token_file = os.path.join(self.tmp, f"{host}.token")
            with open(token_file, "w", encoding="utf-8") as fh:
                fh.write(self.tokens[host])
            base = ["--server", self.url, "--token-file", token_file, "--ca", self.ca]
        argv = [sys.executable, "-m", "vvhost", *base, *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)

    def creds(self, host: str, name: str) -> str:
        """Fetch ``host``'s credentials as that host would, into a fresh directory."""
        d = os.path.join(self.tmp, name)
        out = self.cli("host", "nbd-credentials", host, "--dir", d, host=host)
        assert out.returncode == 0, out.stderr
        return d

    def rotate(self, host: str) -> None:
        self.tokens[host] = self.admin.host_token_rotate(host)["token"]


@pytest.fixture
def lab(tmp_path: str) -> Iterator[Lab]:
    tls = start_tls_plane(tmp_path, private_tgtd=False)
    server = tls.server
    admin = server.client()
    lab = Lab(server, admin, tls.url, tls.ca, str(tmp_path), {})
    try:
        for h in ("ha", "hb"):
            lab.tokens[h] = admin.host_add(h)["token"]
        admin.pe_create("tcp1", "nbd", portal=f"127.0.0.1:{free_port()}")
        admin.container_create("pool", "1G")
        yield lab
    finally:
        admin.close()
        server.stop()
    left = [d for d in server.endpoint_rundirs() if _pid_alive(d)]
    assert not left, left


def _pid_alive(rundir: str) -> bool:
    try:
        with open(os.path.join(rundir, "pid")) as fh:
            return os.path.exists(f"/proc/{int(fh.read())}")
    except FileNotFoundError:
        return False


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def port_of(handle: dict[str, object]) -> int:
    return int(str(handle["uri"]).split("/")[2].rpartition(":")[2])


def nbd_list(handle: dict[str, object], certs: str | None) -> subprocess.CompletedProcess[str]:
    """``nbdinfo --list`` at the handle's daemon, with a host's credentials or none."""
    if certs is None:
        uri = f"nbd://127.0.0.1:{port_of(handle)}/"
    else:
        uri = f"nbds://127.0.0.1:{port_of(handle)}/?tls-certificates={certs}"
    return subprocess.run(
        ["nbdinfo", "--list", uri],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "LOGNAME": "root"},
    )


def with_dir(handle: dict[str, object], certs: str) -> dict[str, object]:
    """The handle as the host side uses it once its credentials are in ``certs``."""
    tls = handle["tls"]
    assert isinstance(tls, dict)
    return {**handle, "tls": {**tls, "dir": certs}}


def qemu_io(handle: dict[str, object], certs: str, cmd: str) -> subprocess.CompletedProcess[str]:
    args = raw_source(with_dir(handle, certs))
    assert args[0] == "--object"  # the client credentials
    return run("qemu-io", *args, "-c", cmd)


def write_pattern(
    lab: Lab, patterns: Patterns, handle: dict[str, object], certs: str, label: str
) -> None:
    """Write ``label`` through the binding with qemu-img (the host's own arguments)."""
    src = os.path.join(lab.tmp, f"{label}.raw")
    with open(src, "wb") as fh:
        fh.truncate(8 * MiB)
    patterns.write(src, label, OFFSETS)
    out = run("qemu-img", "convert", "-n", "-f", "raw", src, *raw_target(with_dir(handle, certs)))
    assert out.returncode == 0, out.stderr


def test_tcp_nbd_opens_only_with_the_hosts_certificate(lab: Lab, patterns: Patterns) -> None:
    va = lab.admin.vvol_create("pool", "8M", name="va")
    lab.admin.vvol_create("pool", "8M", name="vb")
    ha = lab.admin.bind_one("va", "ha", pe="tcp1")
    hb = lab.admin.bind_one("vb", "hb", pe="tcp1")
    # the handle says what the host needs: TLS with its x509 identity
    assert ha["tls"] == {"type": "x509", "identity": ha["tls"]["identity"]}
    assert ha["tls"]["identity"].endswith(",CN=ha") and hb["tls"]["identity"].endswith(",CN=hb")
    pe_port = int(lab.admin.pe("tcp1")["portal"].rpartition(":")[2])
    assert len({port_of(ha), port_of(hb), pe_port}) == 3  # one daemon (one server) per host
    certs_a = lab.creds("ha", "certs-a")
    certs_b = lab.creds("hb", "certs-b")
    assert stat.S_IMODE(os.stat(certs_a).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(certs_a, "client-key.pem")).st_mode) == 0o600

    shown = lab.cli("pe", "show", "tcp1", "--json")
    assert shown.returncode == 0, shown.stderr
    daemons = json.loads(shown.stdout)["daemons"]
    assert {h: (d["portal"], d["alive"]) for h, d in daemons.items()} == {
        "ha": (f"127.0.0.1:{port_of(ha)}", True),
        "hb": (f"127.0.0.1:{port_of(hb)}", True),
    }
    # no credentials: neither the list nor the export opens
    bare = nbd_list(ha, None)
    assert bare.returncode != 0 and va["id"] not in bare.stdout
    plain = run("qemu-io", "-f", "raw", "-c", "read 0 64k", f"nbd://127.0.0.1:{port_of(ha)}/x")
    assert plain.returncode != 0
    # host B's certificate (same CA) at host A's daemon: refused
    other = nbd_list(ha, certs_b)
    assert other.returncode != 0 and va["id"] not in other.stdout
    assert qemu_io(ha, certs_b, "read 0 64k").returncode != 0
    # host A's own: lists only its export, and reads and writes it
    mine = nbd_list(ha, certs_a)
    assert mine.returncode == 0, mine.stderr
    assert ha["export"] in mine.stdout and hb["export"] not in mine.stdout
    write_pattern(lab, patterns, ha, certs_a, "A")
    patterns.check(va["path"], "A", OFFSETS)
    back = os.path.join(lab.tmp, "back.raw")
    out = run("qemu-img", "convert", *raw_source(with_dir(ha, certs_a)), "-O", "raw", back)
    assert out.returncode == 0, out.stderr
    patterns.check(back, "A", OFFSETS)
    # and B's works at B's daemon
    assert nbd_list(hb, certs_b).returncode == 0

    # a host's daemon that dies comes back on its port, still only for that host
    pid = daemon_pid(lab, "ha")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while daemon_pid(lab, "ha") == pid or nbd_list(ha, certs_a).returncode != 0:
        assert time.monotonic() < deadline, "host ha's daemon did not come back"
        time.sleep(0.3)
    assert nbd_list(ha, certs_b).returncode != 0
    assert qemu_io(ha, certs_a, "read -P 0 64k 64k").returncode == 0
    assert lab.admin.audit()["ok"]
    # deleting the endpoint stops every host's daemon
    pids = [daemon_pid(lab, h) for h in ("ha", "hb")]
    lab.admin.unbind(["va"], "ha")
    lab.admin.unbind(["vb"], "hb")
    lab.admin.pe_delete("tcp1")
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)


def daemon_pid(lab: Lab, host: str) -> int:
    with open(os.path.join(lab.server.state_dir, "pe", "tcp1", "hosts", host, "pid")) as fh:
        return int(fh.read())


def test_host_cannot_fetch_another_hosts_credentials(lab: Lab) -> None:
    out = lab.cli("host", "nbd-credentials", "ha", "--dir", f"{lab.tmp}/stolen", host="hb")
    assert out.returncode == 4, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not os.path.exists(f"{lab.tmp}/stolen")
    blocked = os.path.join(lab.tmp, "a-file")
    open(blocked, "w").close()
    bad = lab.cli("host", "nbd-credentials", "ha", "--dir", f"{blocked}/sub", host="ha")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "cannot write NBD credentials" in bad.stderr
    missing = lab.cli("host", "nbd-credentials", "nobody", "--dir", f"{lab.tmp}/none")
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1
    assert not os.path.exists(f"{lab.tmp}/none")


def test_rotate_and_remove_revoke_the_old_certificate(lab: Lab, patterns: Patterns) -> None:
    va = lab.admin.vvol_create("pool", "8M", name="va")
    ha = lab.admin.bind_one("va", "ha", pe="tcp1")
    old = lab.creds("ha", "old")
    assert nbd_list(ha, old).returncode == 0
    first = lab.admin.pe("tcp1")
    lab.rotate("ha")
    # the stale certificate is refused at once; the handle names the new identity
    assert nbd_list(ha, old).returncode != 0
    assert qemu_io(ha, old, "read 0 64k").returncode != 0
    (now,) = lab.admin.bindings(host="ha")
    assert now["tls"]["identity"] != ha["tls"]["identity"] and port_of(now) == port_of(ha)
    new = lab.creds("ha", "new")
    write_pattern(lab, patterns, now, new, "R")
    patterns.check(va["path"], "R", OFFSETS)
    assert lab.admin.pe("tcp1")["alive"] and first["alive"]

    # a control plane restarted after a crash adopts the daemon, current identity kept
    lab.admin.close()
    lab.server.kill()
    lab.server.start()
    lab.admin = lab.server.client()
    assert nbd_list(now, new).returncode == 0
    assert nbd_list(now, old).returncode != 0

    # removal: the host's daemon goes; the same name added again gets a new identity
    lab.admin.unbind(["va"], "ha")
    lab.admin.host_remove("ha")
    gone = nbd_list(now, new)
    assert gone.returncode != 0
    lab.tokens["ha"] = lab.admin.host_add("ha")["token"]
    again = lab.admin.bind_one("va", "ha", pe="tcp1")
    assert again["tls"]["identity"] not in (now["tls"]["identity"], ha["tls"]["identity"])
    for stale in (old, new):
        assert nbd_list(again, stale).returncode != 0
        assert qemu_io(again, stale, "read 0 64k").returncode != 0
    fresh = lab.creds("ha", "fresh")
    assert qemu_io(again, fresh, "read -P 0 64k 64k").returncode == 0
    assert lab.admin.audit()["ok"]
