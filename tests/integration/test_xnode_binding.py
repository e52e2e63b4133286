"""Any replica binds through any node's endpoint: two ``vvhost serve`` replicas on
one private PostgreSQL, nodes n1 (replica ra: a real tgtd and qemu-storage-daemon)
and n2 (replica rb, which runs no endpoint daemon).

    client ── rb (n2) ── catalog row + pe_sync request ──► ra (n1) ── tgtd / qsd
                 ◄──────────── applied generation ─────────┘

Binds, unbinds and rebinds sent to rb change n1's daemons before rb answers; the
data path works through the handles rb gives; an endpoint on a node with no live
replica is refused up front; a replica killed while rb waits gives a clear error,
and the restarted replica's audit is clean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.iscsiauth import authed, portal_url
from tests.runner import pid_running, run, wait_for
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.host import nbdtls
from vvhost.host.vms import raw_source

QEMU_IQN = "iqn.2008-11.org.linux-kvm"  # what qemu-img/qemu-io log in as
LEASE = 3.0
HEARTBEAT = 1.0


def qemu_io(uri: str, command: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run("qemu-io", "-f", "raw", "-c", command, uri, ok=ok)


def presented(handle: dict[str, Any]) -> bool:
    """Does the endpoint daemon present the handle's LUN / export now?"""
    if handle["protocol"] == "iscsi":
        # (with no target left for the initiator, iscsi-ls fails: nothing presented)
        out = run("iscsi-ls", "-i", QEMU_IQN, "-s", portal_url(handle), ok=False)
        return f"Lun:{handle['lun']} " in out.stdout
    out = run("nbdinfo", "--list", f"nbd+unix:///?socket={handle['socket']}", ok=False).stdout
    return str(handle["export"]) in out


def size(handle: dict[str, Any]) -> int:
    info = run("qemu-img", "info", "--output=json", authed(handle)).stdout
    return int(json.loads(info)["virtual-size"])


@dataclass
class Nodes:
    tmp: str
    url: str
    ra: ServerProcess
    rb: ServerProcess
    a: Client
    b: Client

    def cli(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vvhost", "--socket", os.path.join(self.tmp, f"{name}.sock")]
            + list(args),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def restart_ra(self) -> None:
        self.a.close()
        self.ra = _start(self.tmp, self.url, "ra")
        self.a = self.ra.client()


def _start(tmp: str, url: str, name: str) -> ServerProcess:
    """Replica ``name`` (ra on node n1 with a private tgtd, rb on node n2)."""
    node = {"ra": "n1", "rb": "n2"}[name]
    env = {"VVHOST_RECONCILE_INTERVAL": "0", "VVHOST_SPACE_REFRESH": "0"}
    args = ["--db-url", url, "--node", node, "--replica", name]
    args += ["--lease", str(LEASE), "--heartbeat", str(HEARTBEAT)]
    state = os.path.join(tmp, name)
    sock = os.path.join(tmp, f"{name}.sock")
    return ServerProcess(state, sock, env=env, args=args, private_tgtd=name == "ra").start()


@pytest.fixture
def nodes(tmp_path: str, pg_url: str) -> Iterator[Nodes]:
    """ra on n1 runs iscsi1 and nbd1 (made through it); rb on n2 runs none."""
    tmp = str(tmp_path)
    ra = _start(tmp, pg_url, "ra")
    a = ra.client()
    try:
        a.host_add("h1", QEMU_IQN)
        a.pe_create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
        a.pe_create("nbd1", "nbd")
        a.container_create("pool", "1G")
        rb = _start(tmp, pg_url, "rb")
        n = Nodes(tmp, pg_url, ra, rb, a, rb.client())
        try:
            yield n
        finally:
            n.b.close()
            n.rb.stop()
            a = n.a
            ra = n.ra
    finally:
        a.close()
        ra.stop()


def _clean(api: Client) -> None:
    report = api.audit()
    assert report["ok"], report["problems"]


def test_bind_unbind_rebind_through_another_nodes_replica(nodes: Nodes) -> None:
    b = nodes.b
    for name in ("d", "e", "f"):
        b.vvol_create("pool", "16M", name=name)
    assert {p["name"]: p["node"] for p in b.pes()} == {"iscsi1": "n1", "nbd1": "n1"}

    # a batch bind through rb: both LUNs exist in n1's tgtd when rb answers
    started = time.monotonic()
    bound = b.bind(["d", "e"], "h1", pe="iscsi1")
    took = time.monotonic() - started
    assert [r["ok"] for r in bound] == [True, True], bound
    d, e = (r["handle"] for r in bound)
    assert presented(d) and presented(e)
    print(f"cross-node batch bind answered in {took:.2f} s")
    qemu_io(authed(d), "write -P 0x5a 1M 2M")
    qemu_io(authed(e), "write -P 0x6b 0 1M")
    assert "read 2097152/2097152" in qemu_io(authed(d), "read -P 0x5a 1M 2M").stdout

    # NBD: the handle rb gives names the socket in n1's state directory
    f = b.bind_one("f", "h1", pe="nbd1")
    assert f["socket"].startswith(os.path.join(nodes.tmp, "ra"))
    assert presented(f)
    qemu_io(authed(f), "write -P 0x7c 0 4M")
    assert "read 4194304/4194304" in qemu_io(authed(f), "read -P 0x7c 0 4M").stdout

    # extend through rb: n1's tgtd and qsd show the new size when rb answers
    grown = b.vvol_extend("d", "32M")
    assert grown["size"] == 32 << 20
    assert size(d) == 32 << 20
    b.vvol_extend("f", "24M")
    assert size(f) == 24 << 20
    assert "read 4194304/4194304" in qemu_io(authed(f), "read -P 0x7c 0 4M").stdout

    # both replicas see the same bindings, and ra's audit of its daemons is clean
    assert sorted(x["vvol"] for x in nodes.a.bindings()) == sorted(x["vvol"] for x in b.bindings())
    _clean(nodes.a)
    _clean(b)

    # rebind through rb: iSCSI -> NBD, both on n1; the old LUN is gone, data intact
    moved = b.rebind("e", "h1", "nbd1")
    assert moved["protocol"] == "nbd" and presented(moved)
    assert not presented(e)
    assert "read 1048576/1048576" in qemu_io(authed(moved), "read -P 0x6b 0 1M").stdout

    # unbind through rb: LUN and exports are gone from the daemons when it answers
    out = b.unbind(["d", "e", "f"], "h1")
    assert [r["ok"] for r in out] == [True, True, True], out
    assert not presented(d) and not presented(moved) and not presented(f)
    assert b.bindings() == []
    _clean(nodes.a)

    # the data stayed: bound again (through ra this time) it reads back
    again = nodes.a.bind_one("d", "h1", pe="iscsi1")
    assert "read 2097152/2097152" in qemu_io(authed(again), "read -P 0x5a 1M 2M").stdout
    nodes.a.unbind(["d"], "h1")


def test_an_endpoint_on_a_node_without_a_replica_is_refused_up_front(nodes: Nodes) -> None:
    b = nodes.b
    b.vvol_create("pool", "16M", name="d")
    b.pe_create("iscsi9", "iscsi", portal=f"127.0.0.1:{free_port()}", node="n9")
    b.pe_create("nbd9", "nbd", node="n9")
    for pe in ("iscsi9", "nbd9"):
        out = nodes.cli("rb", "vvol", "bind", "d", "--host", "h1", "--pe", pe)
        assert out.returncode == 4, out
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert f"endpoint {pe} is node-gone" in out.stderr and "pe evacuate" in out.stderr
    assert b.bindings() == []
    assert {p["name"]: p["bindings"] for p in b.pes()}["iscsi9"] == 0
    _clean(b)
    # a binding on a live node cannot be rebound there either, and stays as it was
    h = b.bind_one("d", "h1", pe="iscsi1")
    out = nodes.cli("rb", "vvol", "rebind", "d", "--host", "h1", "--pe", "nbd9")
    assert out.returncode == 4 and "node-gone" in out.stderr, out
    (kept,) = b.bindings()
    assert (kept["pe"], kept["state"]) == ("iscsi1", "active") and presented(h)
    b.unbind(["d"], "h1")
    _clean(b)


def test_kill_9_of_the_endpoints_replica_while_another_waits(nodes: Nodes) -> None:
    b = nodes.b
    b.vvol_create("pool", "16M", name="d")
    b.vvol_create("pool", "16M", name="e")
    e = b.bind_one("e", "h1", pe="nbd1")
    qemu_io(authed(e), "write -P 0x4d 0 2M")
    ra = nodes.ra
    assert ra.proc is not None
    os.kill(ra.proc.pid, signal.SIGSTOP)  # it takes no request from now on
    answer: list[subprocess.CompletedProcess[str]] = []
    started = time.monotonic()
    waiter = threading.Thread(
        target=lambda: answer.append(
            nodes.cli("rb", "vvol", "bind", "d", "--host", "h1", "--pe", "iscsi1")
        )
    )
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive()  # rb is waiting for n1
    ra.kill()
    waiter.join(60)
    took = time.monotonic() - started
    (out,) = answer
    print(f"rb answered {took:.2f} s after the bind was sent: {out.stderr.strip()}")
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "node-gone" in out.stderr and "n1" in out.stderr
    assert took < LEASE + 8
    assert [x["vvol"] for x in b.bindings()] == [e["vvol"]]
    # n1 is gone: an unbind through n1's endpoint is refused, the binding kept
    out = nodes.cli("rb", "vvol", "unbind", "e", "--host", "h1")
    assert out.returncode == 4 and out.stderr.count("\n") == 1, out
    assert "endpoint nbd1 is node-gone" in out.stderr
    assert [(x["vvol"], x["state"]) for x in b.bindings()] == [(e["vvol"], "active")]

    nodes.restart_ra()  # same replica id: it adopts tgtd and reconciles it
    _clean(nodes.a)
    _clean(b)
    assert presented(e)  # the kept binding is served again, its data intact
    assert "read 2097152/2097152" in qemu_io(authed(e), "read -P 0x4d 0 2M").stdout
    h = b.bind_one("d", "h1", pe="iscsi1")  # n1 is back: the bind through rb works
    qemu_io(authed(h), "write -P 0x21 0 1M")
    assert "read 1048576/1048576" in qemu_io(authed(h), "read -P 0x21 0 1M").stdout
    b.unbind(["d", "e"], "h1")
    assert not presented(h) and not presented(e)
    _clean(nodes.a)


def test_a_fence_through_another_nodes_replica_cuts_the_daemons_before_it_answers(
    nodes: Nodes,
) -> None:
    b = nodes.b
    for name in ("d", "f"):
        b.vvol_create("pool", "16M", name=name)
    d = b.bind_one("d", "h1", pe="iscsi1")
    f = b.bind_one("f", "h1", pe="nbd1")
    qemu_io(authed(d), "write -P 0x3c 0 1M")
    assert presented(d) and presented(f)
    fenced = b.host_fence("h1")
    assert fenced["bindings"] == 2
    # n1's tgtd (still running) no longer has h1's target, its qemu-storage-daemon
    # no export for h1
    assert nodes.a.pe("iscsi1")["alive"] and nodes.a.pe("nbd1")["alive"]
    assert not presented(d) and not presented(f)
    assert qemu_io(authed(d), "read -P 0x3c 0 1M", ok=False).returncode != 0
    assert {x["state"] for x in nodes.a.bindings()} == {"fenced"}
    _clean(nodes.a)


def test_a_lost_listener_session_costs_a_round_not_the_bind(nodes: Nodes) -> None:
    """The catalog ends n1's LISTEN session: the bind through rb is applied anyway
    (by the reconnected listener or the fallback round) before rb answers."""
    b = nodes.b
    b.vvol_create("pool", "16M", name="d")
    conninfo = make_url(nodes.url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'vvhost-replica-ra' AND query LIKE 'LISTEN%'"
        ).fetchall()
    assert ended == [(True,)]
    started = time.monotonic()
    h = b.bind_one("d", "h1", pe="iscsi1")
    took = time.monotonic() - started
    print(f"bind after the listener's session ended: {took:.2f} s")
    assert presented(h) and took < 5
    qemu_io(authed(h), "write -P 0x19 0 1M")
    assert "read 1048576/1048576" in qemu_io(authed(h), "read -P 0x19 0 1M").stdout
    b.unbind(["d"], "h1")
    assert not presented(h)
    _clean(nodes.a)


def _tls_io(handle: dict[str, Any], certs: str, command: str) -> subprocess.CompletedProcess[str]:
    """qemu-io at a TCP NBD handle with the client credentials in ``certs``."""
    return run("qemu-io", *raw_source({**handle, "tls": {**handle["tls"], "dir": certs}}),
               "-c", command, ok=False)  # fmt: skip


def _creds_dir(nodes: Nodes, api: Client, host: str, name: str) -> str:
    d = os.path.join(nodes.tmp, name)
    nbdtls.fetch(api, host, d)
    return d


def test_nbd_over_tls_is_one_ca_and_one_identity_through_every_node(nodes: Nodes) -> None:
    """A TCP NBD endpoint on n1, driven through rb (n2): the credentials rb hands
    out are the ones n1's daemon lets in; a rotation through rb refuses the old
    certificate at n1 before rb answers; a removal through rb stops n1's daemon.
    Hostile: another host's certificate, the certificate from before the rotation."""
    a, b = nodes.a, nodes.b
    a.pe_create("nbdt", "nbd", portal=f"127.0.0.1:{free_port()}")
    b.host_add("h2")
    b.vvol_create("pool", "16M", name="t")
    h = b.bind_one("t", "h1", pe="nbdt")
    assert b.host_nbd_credentials("h1") == a.host_nbd_credentials("h1")
    assert h["tls"]["identity"] == a.host_nbd_credentials("h1")["identity"]
    assert [x["tls"] for x in a.bindings(host="h1")] == [h["tls"]]  # same handle on n1
    old = _creds_dir(nodes, b, "h1", "h1-old")
    out = _tls_io(h, old, "write -P 0x6e 0 2M")
    assert out.returncode == 0, out.stdout + out.stderr
    foreign = _creds_dir(nodes, a, "h2", "h2")
    assert _tls_io(h, foreign, "read 0 64k").returncode != 0  # h2's certificate: refused

    b.host_token_rotate("h1")  # through n2: n1's daemon lets in only the new identity now
    assert _tls_io(h, old, "read 0 64k").returncode != 0
    [again] = b.bindings(host="h1")
    assert again["tls"]["identity"] != h["tls"]["identity"]
    new = _creds_dir(nodes, b, "h1", "h1-new")
    out = _tls_io(again, new, "read -P 0x6e 0 2M")
    assert out.returncode == 0 and "read 2097152/2097152" in out.stdout, out.stdout + out.stderr

    pid_file = os.path.join(nodes.tmp, "ra", "pe", "nbdt", "hosts", "h1", "pid")
    with open(pid_file) as fh:
        pid = int(fh.read())
    b.unbind(["t"], "h1")
    b.host_remove("h1")  # through n2: n1 stops h1's daemon
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}")
    assert "h1" not in a.pe("nbdt").get("daemons", {})
    _clean(nodes.a)


def _pid_in(rundir: str) -> int:
    with open(os.path.join(rundir, "pid")) as fh:
        return int(fh.read())


def test_an_endpoint_deleted_through_another_node_stops_there(nodes: Nodes) -> None:
    """nbd1 deleted through rb: n1's qemu-storage-daemon stops within a supervisor
    round and its run directory goes. iscsi1 deleted through rb while ra is down
    (kill -9; its tgtd runs on): ra's restart stops that tgtd. Hostile: a run
    directory whose pid names a process that is not the daemon it recorded (a
    reused PID) loses the directory, and the process is not signalled."""
    pe_dir = os.path.join(nodes.tmp, "ra", "pe")
    qsd, tgtd = _pid_in(os.path.join(pe_dir, "nbd1")), _pid_in(os.path.join(pe_dir, "iscsi1"))
    nodes.b.pe_delete("nbd1")
    nbd1_dir = os.path.join(pe_dir, "nbd1")
    assert wait_for(lambda: not pid_running(qsd) and not os.path.exists(nbd1_dir), 15)
    assert pid_running(tgtd) and nodes.a.pe("iscsi1")["alive"]  # the other endpoint runs on

    stranger = subprocess.Popen(["sleep", "300"])
    try:
        nodes.ra.kill()
        planted = os.path.join(pe_dir, "gone")  # as a deleted endpoint's directory
        os.makedirs(planted)
        with open(os.path.join(planted, "pid"), "w") as fh:
            fh.write(f"{stranger.pid}\n")
        with open(os.path.join(planted, "cmdline"), "wb") as fh:
            fh.write(b"qemu-storage-daemon\0--chardev\0socket\0")
        nodes.b.pe_delete("iscsi1")
        assert nodes.b.pes() == []
        time.sleep(1.5)
        assert pid_running(tgtd)  # nobody on n1 to stop it
        nodes.restart_ra()  # same replica id: it stops what no endpoint row names any more
        assert wait_for(lambda: not pid_running(tgtd), 15)
        assert not os.path.exists(os.path.join(pe_dir, "iscsi1"))
        assert not os.path.exists(planted)
        assert stranger.poll() is None  # a process it did not start: not signalled
    finally:
        stranger.kill()
        stranger.wait()
    _clean(nodes.a)
