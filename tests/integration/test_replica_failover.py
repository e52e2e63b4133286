"""Two ``vvhost serve`` replicas on one private PostgreSQL: kill -9 (or freeze) one
in the middle of an operation; the other finishes or rolls it back.

    replica ra (state dir a/)  ──┐                     ┌── dir array  a/arrays/local
                                 ├── PostgreSQL (pglab) ┤
    replica rb (state dir b/)  ──┘                     └── file endpoint f1 (PE_DIR)

ra stops at a crash point (``VVHOST_FAULT_AT``) in (a) a linked clone, (b) the
commit of a group snapshot, (c) a batch bind, and is killed with -9 there; rb,
running all along, answers writes at once and, once ra's lease expired, rolls
each back.  Then: ``audit`` clean through rb, every pattern's checksum intact,
the vvols usable.  A frozen replica (SIGSTOP past its lease) is fenced: once
resumed, its next write is refused in one line and the catalog is intact.
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

import pytest

from tests.crashing import crash_during
from tests.patterns import CHUNK, Patterns
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.errors import VvhostError
from vvhost.faults import FAULT_ENV, FAULT_MARK

LEASE = 3.0
HEARTBEAT = 1.0


@dataclass
class Replicas:
    tmp: str
    url: str
    pe_dir: str

    def server(self, name: str, fault: str = "") -> ServerProcess:
        env = {FAULT_ENV: fault, "VVHOST_RECONCILE_INTERVAL": "0", "VVHOST_SPACE_REFRESH": "0"}
        args = ["--db-url", self.url, "--node", f"node-{name}", "--replica", name]
        args += ["--lease", str(LEASE), "--heartbeat", str(HEARTBEAT)]
        return ServerProcess(self.state(name), self.socket(name), env=env, args=args).start()

    def state(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def socket(self, name: str) -> str:
        return os.path.join(self.tmp, f"{name}.sock")

    def cli(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vvhost", "--socket", self.socket(name), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )


@pytest.fixture
def replicas(tmp_path: str, pg_url: str) -> Replicas:
    pe_dir = os.path.join(tmp_path, "pe-dir")
    os.makedirs(pe_dir)
    return Replicas(str(tmp_path), pg_url, pe_dir)


@pytest.fixture
def rb(replicas: Replicas) -> Iterator[Client]:
    """Replica rb, running through the whole test; the catalog made through ra
    first (so the default array lives in ra's state dir, shared by both)."""
    ra = replicas.server("ra")
    try:
        api = ra.client()
        api.host_add("h1", "iqn.2026-12.test.vvhost:h1")
        api.pe_create("f1", "file", path=replicas.pe_dir)
        api.container_create("pool", "1G")
        api.close()
    finally:
        ra.stop()
    server = replicas.server("rb")
    api = server.client()
    try:
        yield api
    finally:
        api.close()
        server.stop()
        ServerProcess(replicas.state("ra"), replicas.socket("ra")).stop_endpoint_daemons()


def _vvols(api: Client) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in api.vvols()}


def _first_write(api: Client, name: str) -> float:
    """Seconds until a write through ``api`` succeeds (it is retried meanwhile)."""
    start = time.monotonic()
    while True:
        try:
            api.vvol_create("pool", "1M", name=name)
            return time.monotonic() - start
        except VvhostError:
            assert time.monotonic() - start < 30, "no write answered"
            time.sleep(0.05)


def _taken_over(api: Client, timeout: float = 30.0) -> tuple[float, dict[str, Any]]:
    """Seconds until the audit through ``api`` is clean (no unfinished operation,
    no orphan, no binding half-made), and that report."""
    start = time.monotonic()
    while True:
        report = api.audit()
        if report["ok"]:
            return time.monotonic() - start, report
        assert time.monotonic() - start < timeout, report["problems"]
        time.sleep(0.2)


def _kill_in_thread(
    replicas: Replicas, fault: str, call: Any
) -> tuple[ServerProcess, threading.Thread, list[BaseException]]:
    """Start ra stopping at ``fault``, run ``call(client)`` against it in a thread
    until it gets there; ra is left waiting at the fault point."""
    mark = os.path.join(replicas.state("ra"), FAULT_MARK)
    if os.path.exists(mark):
        os.unlink(mark)
    ra = replicas.server("ra", fault)
    errors: list[BaseException] = []

    def run() -> None:
        api = ra.client()
        try:
            call(api)
        except BaseException as exc:  # noqa: BLE001 - the replica died under it
            errors.append(exc)
        finally:
            api.close()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not os.path.exists(mark):
        assert thread.is_alive(), errors
        assert time.monotonic() < deadline, "fault point never reached"
        time.sleep(0.05)
    return ra, thread, errors


def test_kill_9_of_a_replica_mid_operation_the_other_rolls_each_back(
    replicas: Replicas, rb: Client, patterns: Patterns
) -> None:
    d = rb.vvol_create("pool", "16M", name="d")
    patterns.write(d["path"], "A", [0, 5 * CHUNK])
    s1 = rb.vvol_snapshot("d", name="d@s1")
    patterns.write(d["path"], "B", [5 * CHUNK, 9 * CHUNK])
    e = rb.vvol_create("pool", "8M", name="e")
    patterns.write(e["path"], "E", [0, 2 * CHUNK])
    shas = {"d": patterns.sha(d["path"]), "d@s1": patterns.sha(s1["path"])}
    shas["e"] = patterns.sha(e["path"])
    names = {"d", "d@s1", "e"}
    figures: dict[str, tuple[float, float]] = {}

    # (a) a linked clone, killed after the array made it, before the catalog knew
    crash_during(
        lambda fault: replicas.server("ra", fault),
        replicas.state("ra"),
        replicas.socket("ra"),
        "clone:copied",
        "vvol",
        "clone",
        "d@s1",
        "--linked",
        "--name",
        "c1",
    )
    figures["clone"] = (_first_write(rb, "w-clone"), _taken_over(rb)[0])
    names.add("w-clone")
    assert set(_vvols(rb)) == names  # the clone rolled back: no c1, no file of it

    # (b) a group snapshot of d and e, killed after the array committed both
    def group(api: Client) -> None:
        prepared = api.snapshot_prepare(["d", "e"], ["d@g", "e@g"])
        ids = [p["id"] for p in prepared]
        api.snapshot_cut(ids)
        api.snapshot_commit(ids)

    ra, thread, errors = _kill_in_thread(replicas, "snapshot-group:committed", group)
    ra.kill()
    thread.join(30)
    assert errors, "the commit answered although its replica was killed"
    figures["group snapshot"] = (_first_write(rb, "w-group"), _taken_over(rb)[0])
    names.add("w-group")
    assert set(_vvols(rb)) == names  # both snapshots rolled back
    assert rb.vvol("d")["refs"] == 1 and rb.vvol("e")["refs"] == 0

    # (c) a batch bind of d and e for h1, killed once the endpoint made both entries
    def bind(api: Client) -> None:
        api.bind(["d", "e"], "h1", pe="f1")

    ra, thread, errors = _kill_in_thread(replicas, "bind:attached", bind)
    ra.kill()
    thread.join(30)
    assert errors, "the bind answered although its replica was killed"
    figures["batch bind"] = (_first_write(rb, "w-bind"), _taken_over(rb)[0])
    assert rb.bindings() == []  # the half-made bindings went with their replica

    # everything intact and usable through the survivor
    for name, sha in shas.items():
        assert patterns.sha(rb.vvol(name)["path"]) == sha, name
    bound = rb.bind(["d", "e"], "h1", pe="f1")
    for result in bound:
        assert patterns.sha(result["handle"]["path"]) == shas[result["vvol"]]
    rb.unbind(["d", "e"], "h1")
    assert rb.vvol_snapshot("d", name="d@after")["state"] == "ready"
    report = rb.audit()
    assert report["ok"], report["problems"]
    for what, (write, takeover) in figures.items():
        # a write answers at once; the takeover waits for the lease (+ a heartbeat)
        print(
            f"kill -9 during {what}: write answered after {write:.2f} s, "
            f"taken over after {takeover:.2f} s"
        )
        assert write < 5.0, (what, write)
        assert takeover < LEASE + 5 * HEARTBEAT + 5, (what, takeover)


def test_a_frozen_replica_is_fenced_and_cannot_write_when_resumed(
    replicas: Replicas, rb: Client, patterns: Patterns
) -> None:
    d = rb.vvol_create("pool", "16M", name="d")
    patterns.write(d["path"], "A", [0, 4 * CHUNK])
    rb.vvol_snapshot("d", name="d@s1")
    sha = patterns.sha(d["path"])

    def clone(api: Client) -> None:
        api.vvol_clone("d@s1", linked=True, name="c1")

    ra, thread, _errors = _kill_in_thread(replicas, "clone:copied", clone)
    try:
        assert ra.proc is not None
        ra.proc.send_signal(signal.SIGSTOP)  # frozen mid-clone, holding its locks
        # the frozen replica's lock on d@s1 is a database lock: rb's clone waits ...
        waiting: list[dict[str, Any]] = []
        other = threading.Thread(
            target=lambda: waiting.append(rb.vvol_clone("d@s1", linked=True, name="c2"))
        )
        other.start()
        time.sleep(0.8)
        assert other.is_alive() and not waiting
        _seconds, report = _taken_over(rb)  # rb fenced it and rolled the clone back
        other.join(30)  # ... until the takeover ended ra's sessions, and the lock with them
        assert waiting and waiting[0]["state"] == "ready"
        assert patterns.sha(waiting[0]["path"]) == sha  # d@s1 holds what d held
        assert set(_vvols(rb)) == {"d", "d@s1", "c2"}
        events = [e for e in rb.events()["events"] if e["kind"] == "replica.taken-over"]
        assert [e["subject"] for e in events] == ["ra"]
        ra.proc.send_signal(signal.SIGCONT)
        late = replicas.cli("ra", "vvol", "create", "--container", "pool", "--size", "1M")
        assert late.returncode == 7, late
        assert late.stderr.count("\n") == 1 and "lost its lease" in late.stderr, late.stderr
        again = replicas.cli("ra", "container", "create", "x", "--capacity", "1M")
        assert again.returncode == 7 and "replica ra does not take requests" in again.stderr
        # a client that knows both replicas is sent on to rb before ra starts anything
        both = f"unix://{replicas.socket('ra')},unix://{replicas.socket('rb')}"
        moved = subprocess.run(
            [sys.executable, "-m", "vvhost", "--server", both, "container", "create", "y"]
            + ["--capacity", "1M", "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["name"] == "y"
    finally:
        ra.kill()
        thread.join(30)
    assert set(_vvols(rb)) == {"d", "d@s1", "c2"}  # nothing of ra's landed
    assert patterns.sha(d["path"]) == sha
    report = rb.audit()
    assert report["ok"], report["problems"]


def test_an_endpoint_whose_node_is_gone_is_reported_and_evacuated(
    replicas: Replicas, rb: Client, patterns: Patterns
) -> None:
    """f1 names node-ra (made through ra); once ra is gone, ``pe list`` says so and
    ``pe evacuate`` moves its bindings to f2 on node-rb."""
    d = rb.vvol_create("pool", "16M", name="d")
    patterns.write(d["path"], "A", [0, 6 * CHUNK])
    sha = patterns.sha(d["path"])
    f2_dir = os.path.join(replicas.tmp, "pe-dir-2")
    f2 = rb.pe_create("f2", "file", path=f2_dir)
    assert f2["node"] == "node-rb" and f2["node_state"] == "live"
    ra = replicas.server("ra")
    try:
        api = ra.client()
        (bound,) = api.bind(["d"], "h1", pe="f1")
        api.close()
        assert patterns.sha(bound["handle"]["path"]) == sha
        states = {p["name"]: (p["node"], p["node_state"]) for p in rb.pes()}
        assert states == {"f1": ("node-ra", "live"), "f2": ("node-rb", "live")}
        listed = json.loads(replicas.cli("rb", "replica", "list", "--json").stdout)
        seen = {r["id"]: (r["node"], r["state"], r["me"]) for r in listed}
        assert seen == {"ra": ("node-ra", "live", False), "rb": ("node-rb", "live", True)}
    finally:
        ra.kill()
    deadline = time.monotonic() + LEASE + 10
    while {p["name"]: p["node_state"] for p in rb.pes()}["f1"] != "node-gone":
        assert time.monotonic() < deadline, "f1 never reported node-gone"
        time.sleep(0.2)
    listed = replicas.cli("rb", "pe", "list")
    assert listed.returncode == 0 and "node-gone" in listed.stdout
    items = {i["name"]: i for i in rb.health_report()["items"] if i["kind"] == "endpoint"}
    assert items["f1"]["status"] == "critical" and "pe evacuate f1" in items["f1"]["advice"]
    assert items["f2"]["status"] == "ok"
    assert [r["id"] for r in rb.replicas()] == ["rb"]  # ra's row went with the takeover
    moved = replicas.cli("rb", "pe", "evacuate", "f1", "--to", "f2", "--json")
    assert moved.returncode == 0, moved.stderr
    (b,) = rb.bindings()
    assert (b["vvol"], b["host"], b["pe"]) == (d["id"], "h1", "f2")
    assert b["path"].startswith(f2_dir) and patterns.sha(b["path"]) == sha
    again = replicas.cli("rb", "pe", "evacuate", "f1", "--to", "f2")
    assert again.returncode == 0 and again.stdout == ""  # nothing left on f1
    bad = replicas.cli("rb", "pe", "evacuate", "f1", "--to", "nope")
    assert bad.returncode == 3 and bad.stderr.count("\n") == 1
    rb.unbind(["d"], "h1")
    report = rb.audit()
    assert report["ok"], report["problems"]
