"""A fenced replica can no longer write to a Ceph array (private PostgreSQL and Ceph).

Two control planes (``Service``, in process) share one catalog and one rbd
array.  Replica ra copies the diffs of a vvol into another and stops after its
first block (the copy's progress callback waits, and ra's heartbeat and
background rounds stop, as under SIGSTOP).  Replica rb fences ra, blocklists
ra's recorded librados client and finishes the copy; a newer writer then
writes the vvol.  When ra goes on, Ceph refuses its late writes: the data is
what came after the takeover, ra's copy ends with ``replica-fenced`` and ra
stays up.  ra started again under the same id connects anew and works.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.patterns import Patterns, chunk_bytes
from vvhost.catalog import clientrepo, repo
from vvhost.cephlab import CephLab
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.errors import ReplicaFenced
from vvhost.faults import FAULT_ENV, FAULT_MARK, FAULT_SIGNAL_ENV
from vvhost.service import Config, Service
from vvhost.service.context import DEFAULT_ARRAY_ENV
from vvhost.service.replica import ReplicaSettings
from vvhost.service.tenancy import UNIX_ADMIN

LEASE = ReplicaSettings(lease=1.0, heartbeat=0.25)
MiB = 1 << 20
OFFSETS = [0, 4 * MiB, 8 * MiB, 12 * MiB]  # one chunk in each 4 MiB block of the copy


class Replicas:
    """Replicas on one catalog and rbd array, each closed once (at the latest after the test)."""

    def __init__(self, root: str, url: str, spec: dict[str, str]) -> None:
        self.root, self.url, self.spec = root, url, spec
        self.running: list[Service] = []

    def start(self, state: str, name: str) -> Service:
        config = dataclasses.replace(
            Config.from_env(os.path.join(self.root, state), self.url),
            default_array=self.spec,
            reconcile_interval=0,
            space_refresh=0,
            replica=dataclasses.replace(LEASE, node=name, replica=name),
        )
        svc = Service(config)
        self.running.append(svc)
        svc.start()
        return svc

    def stop(self, svc: Service) -> None:
        self.running.remove(svc)
        svc.close()


@pytest.fixture
def replicas(
    tmp_path: str, pg_url: str, ceph_cluster: CephLab, ceph_pool: str
) -> Iterator[Replicas]:
    spec = {
        "backend": "rbd",
        "pool": ceph_pool,
        "conf": ceph_cluster.conf,
        "keyring": ceph_cluster.admin_keyring,
    }
    lab = Replicas(str(tmp_path), pg_url, spec)
    try:
        yield lab
    finally:
        for svc in reversed(lab.running):
            svc.close()


def _freeze(svc: Service) -> None:
    """Stop what would touch the catalog on its own (its heartbeat above all)."""
    svc.ctx.replica._beat.stop()
    for thread in (svc.takeover, svc.reconciler, svc.contact_watch, svc.maintenance):
        thread.stop()


def _clients(svc: Service, replica: str) -> list[clientrepo.Client]:
    with svc.ctx.db.tx() as conn:
        return clientrepo.of(conn, replica)


def _pausing(svc: Service, reached: threading.Event, go_on: threading.Event) -> None:
    """The first progress report of ``svc``'s copies waits until ``go_on``."""
    real = svc.ctx.progress.callback

    def callback(op_id: str) -> Any:
        report = real(op_id)

        def step(done: int, total: int) -> None:
            report(done, total)
            if not reached.is_set():
                reached.set()
                go_on.wait(60)

        return step

    svc.ctx.progress.callback = callback  # type: ignore[method-assign]


def test_a_fenced_replica_can_no_longer_write_to_the_rbd_array(
    replicas: Replicas, ceph_cluster: CephLab
) -> None:
    began = time.monotonic()
    a = replicas.start("a", "ra")
    b = replicas.start("b", "rb")
    patterns = Patterns()
    patterns.ceph = (ceph_cluster.conf, ceph_cluster.admin_keyring)
    a.containers.create("pool", "1G")
    src = a.vvols.create("pool", "16M", name="src")
    a.cow.snapshot("src", name="base")
    patterns.write(src, "S", OFFSETS)
    dst = a.vvols.create("pool", "16M", name="dst")

    # ra's client on the array is in the catalog, once (recorded when it connected)
    (array,) = a.arrays.listing()
    mine = _clients(b, "ra")
    assert [c.array_id for c in mine] == [array.id]
    old_addr = mine[0].addr
    assert old_addr == a.ctx.backend(array.id).cluster.address()  # type: ignore[attr-defined]
    assert [c.addr for c in _clients(a, "rb")] == [
        b.ctx.backend(array.id).cluster.address()  # type: ignore[attr-defined]
    ]

    # ra copies the diffs into dst and stops after the first block of four
    reached, go_on = threading.Event(), threading.Event()
    _pausing(a, reached, go_on)
    outcome: dict[str, Any] = {}

    def copy() -> None:
        try:
            outcome["answer"] = a.data.copy_diffs("src", "base", "dst")
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc

    thread = threading.Thread(target=copy)
    thread.start()
    try:
        assert reached.wait(30), "ra's copy never reported progress"
        _freeze(a)

        # rb takes over: ra fenced, its client blocklisted, the copy finished by rb
        deadline = time.monotonic() + 20
        while not any(t["replica"] == "ra" for t in b.takeover.taken):
            assert time.monotonic() < deadline, "rb did not take over from ra"
            time.sleep(0.1)
        patterns.check(dst, "S", OFFSETS)
        with ceph_cluster.admin() as ceph:
            assert old_addr in ceph.blocklist_ls()
        assert _clients(b, "ra") == []  # blocklisted: the rows went
        events = b.ctx.events.read(UNIX_ADMIN)["events"]
        taken = [e for e in events if e["kind"] == "replica.taken-over"]
        assert len(taken) == 1 and taken[0]["subject"] == "ra"
        assert taken[0]["fields"]["blocklisted"] == [old_addr]
        assert taken[0]["fields"]["not_blocklisted"] == []
        assert "1 ceph clients blocklisted" in taken[0]["message"]

        # a newer writer, after the takeover
        for off in OFFSETS:
            b.data.write("dst", off, chunk_bytes("N", off))
    finally:
        go_on.set()  # ra goes on with its copy
        thread.join(60)
    assert not thread.is_alive()

    # Ceph refused ra's late writes: dst holds what came after the takeover
    patterns.check(dst, "N", OFFSETS)
    error = outcome.get("error")
    assert isinstance(error, ReplicaFenced), outcome
    assert "ra lost its lease" in str(error) and "\n" not in str(error)
    with pytest.raises(ReplicaFenced):
        a.vvols.create("pool", "8M", name="late")
    with b.ctx.db.tx() as conn:
        assert repo.journal_list(conn) == []
    assert {v["name"] for v in b.vvols.listing()} == {"src", "base", "dst"}
    assert b.vvols.show("dst")["state"] == "ready"
    report = b.audit()
    assert report["ok"], report["problems"]
    replicas.stop(a)  # the fenced process stops cleanly

    # ra again, under the same id: a new client (new nonce), recorded, and it writes
    again = replicas.start("a2", "ra")
    again.data.write("dst", OFFSETS[1], chunk_bytes("R", OFFSETS[1]))
    assert again.data.read("dst", OFFSETS[1], 4096) == chunk_bytes("R", OFFSETS[1])[:4096]
    fresh = [c.addr for c in _clients(b, "ra")]
    assert len(fresh) == 1 and fresh[0] != old_addr
    patterns.check(dst, "N", [OFFSETS[0], *OFFSETS[2:]])
    print(f"scenario took {time.monotonic() - began:.1f}s")


def test_a_restart_under_the_same_id_cuts_the_earlier_process_off(
    replicas: Replicas, ceph_cluster: CephLab
) -> None:
    """No other replica runs: ra started again (its earlier process frozen) takes its
    row over at the next epoch and blocklists the earlier process's client itself."""
    a = replicas.start("a", "ra")
    patterns = Patterns()
    patterns.ceph = (ceph_cluster.conf, ceph_cluster.admin_keyring)
    a.containers.create("pool", "1G")
    v = a.vvols.create("pool", "8M", name="d")
    patterns.write(v, "A", OFFSETS[:2])
    (array,) = a.arrays.listing()
    earlier = a.ctx.backend(array.id)
    old = earlier.cluster.address()  # type: ignore[attr-defined]
    _freeze(a)

    again = replicas.start("a2", "ra")  # waits for the lease, then a new epoch
    new = again.ctx.backend(array.id).cluster.address()  # type: ignore[attr-defined]
    assert new is not None and new != old
    assert [(c.addr, c.epoch) for c in _clients(again, "ra")] == [(new, again.ctx.replica.epoch)]
    with ceph_cluster.admin() as ceph:
        assert old in ceph.blocklist_ls()
    events = again.ctx.events.read(UNIX_ADMIN)["events"]
    (cut,) = [e for e in events if e["kind"] == "replica.clients-blocklisted"]
    assert cut["subject"] == "ra" and cut["fields"]["blocklisted"] == [old]

    # the earlier process writes through the client it had: refused, as replica-fenced
    with pytest.raises(ReplicaFenced), earlier.open(v["id"], writable=True) as io:
        io.write(0, chunk_bytes("late", 0))
        io.flush()
    patterns.check(v, "A", OFFSETS[:2])


# -- the same with `vvhost serve` processes, one frozen by SIGSTOP ----------------------------


def _serve(root: str, url: str, spec: dict[str, str], name: str, fault: str = "") -> ServerProcess:
    env = {
        FAULT_ENV: fault,
        FAULT_SIGNAL_ENV: "STOP" if fault else "",
        DEFAULT_ARRAY_ENV: json.dumps(spec),
        "VVHOST_RECONCILE_INTERVAL": "0",
        "VVHOST_SPACE_REFRESH": "0",
    }
    args = ["--db-url", url, "--node", f"node-{name}", "--replica", name]
    args += ["--lease", "2", "--heartbeat", "0.5"]
    state, sock = os.path.join(root, name), os.path.join(root, f"{name}.sock")
    return ServerProcess(state, sock, env=env, args=args).start()


def _state(pid: int) -> str:
    """The process state letter (``T``: stopped)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vvhost", "--socket", server.socket, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _taken_over(api: Client, replica: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for event in api.events()["events"]:
            if event["kind"] == "replica.taken-over" and event["subject"] == replica:
                return event
        assert time.monotonic() < deadline, f"nobody took over from {replica}"
        time.sleep(0.2)


def test_a_replica_frozen_mid_copy_is_cut_off_the_rbd_array(
    tmp_path: str, pg_url: str, ceph_cluster: CephLab, ceph_pool: str
) -> None:
    spec = {
        "backend": "rbd",
        "pool": ceph_pool,
        "conf": ceph_cluster.conf,
        "keyring": ceph_cluster.admin_keyring,
    }
    patterns = Patterns()
    patterns.ceph = (ceph_cluster.conf, ceph_cluster.admin_keyring)
    root = str(tmp_path)
    ra = _serve(root, pg_url, spec, "ra", fault="copy-diffs:copying")
    servers = [ra]
    copy: subprocess.Popen[bytes] | None = None
    try:
        api = ra.client()
        api.container_create("pool", "1G")
        src = api.vvol_create("pool", "16M", name="src")
        api.vvol_snapshot("src", name="base")
        patterns.write(src, "S", OFFSETS)
        dst = api.vvol_create("pool", "16M", name="dst")
        api.close()
        rb = _serve(root, pg_url, spec, "rb")
        servers.append(rb)
        other = rb.client()

        # ra copies src's diffs into dst and freezes itself after the first block
        copy = subprocess.Popen(
            [sys.executable, "-m", "vvhost", "--socket", ra.socket, "vvol", "copy-diffs"]
            + ["src", "--base", "base", "--to", "dst"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert ra.proc is not None
        mark, deadline = os.path.join(ra.state_dir, FAULT_MARK), time.monotonic() + 30
        while not (os.path.exists(mark) and _state(ra.proc.pid) == "T"):
            assert copy.poll() is None, copy.communicate()
            assert time.monotonic() < deadline, "ra never froze in its copy"
            time.sleep(0.05)

        # rb fences ra, blocklists its client, finishes the copy
        event = _taken_over(other, "ra")
        (addr,) = event["fields"]["blocklisted"]
        with ceph_cluster.admin() as ceph:
            assert addr in ceph.blocklist_ls()
        patterns.check(dst, "S", OFFSETS)
        patterns.write(dst, "N", OFFSETS)  # a newer writer

        os.kill(ra.proc.pid, signal.SIGCONT)  # ra goes on with the copy it was in
        _out, err = copy.communicate(timeout=60)
        assert copy.returncode == 7, err
        assert err.count(b"\n") == 1 and err.startswith(b"vvhost: error: "), err
        assert b"replica ra" in err, err
        patterns.check(dst, "N", OFFSETS)  # Ceph refused ra's late writes
        assert ra.proc.poll() is None  # ra lives on, and refuses every request in one line
        refused = _cli(ra, "vvol", "list")
        assert refused.returncode == 7 and refused.stderr.count("\n") == 1, refused.stderr
        report = other.audit()
        assert report["ok"], report["problems"]
        assert other.vvol("dst")["state"] == "ready"
        other.close()

        # stopped and started again under the same id: a new client, and it writes
        ra.stop()
        servers.remove(ra)
        again = _serve(root, pg_url, spec, "ra")
        servers.append(again)
        api = again.client()
        api.vvol_write("dst", OFFSETS[1], chunk_bytes("R", OFFSETS[1]))
        assert api.vvol_read("dst", OFFSETS[1], 4096) == chunk_bytes("R", OFFSETS[1])[:4096]
        api.close()
        with ceph_cluster.admin() as ceph:
            assert addr in ceph.blocklist_ls()  # the old client stays cut
    finally:
        if ra.proc is not None and ra.proc.poll() is None:
            os.kill(ra.proc.pid, signal.SIGCONT)
        if copy is not None and copy.poll() is None:
            copy.kill()
            copy.wait()
        for server in reversed(servers):
            server.stop()
