"""Replica leases, fencing and database locks on a private PostgreSQL (in process).

Two control planes (``Service``) share one catalog; each has its own state dir.
A replica whose heartbeat stops loses its lease; the other fences it (epoch + 1)
and takes its journaled operations over; the fenced one cannot write any more.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.patterns import CHUNK, Patterns
from vvhost.catalog import replicarepo, repo
from vvhost.catalog.dblocks import DbLockTable
from vvhost.errors import InvalidInput, ReplicaFenced
from vvhost.service import Config, Service
from vvhost.service.replica import ReplicaSettings, application_name
from vvhost.service.tenancy import UNIX_ADMIN

LEASE = ReplicaSettings(node="n", lease=1.0, heartbeat=0.25)


def _service(state: str, url: str, name: str) -> Service:
    config = dataclasses.replace(
        Config.from_env(state, url),
        reconcile_interval=0,
        space_refresh=0,
        replica=dataclasses.replace(LEASE, node=name, replica=name),
    )
    svc = Service(config)
    svc.start()
    return svc


@pytest.fixture
def two(tmp_path: str, pg_url: str) -> Iterator[tuple[Service, Service]]:
    a = _service(os.path.join(tmp_path, "a"), pg_url, "ra")
    b = _service(os.path.join(tmp_path, "b"), pg_url, "rb")
    try:
        yield a, b
    finally:
        b.close()
        a.close()


def _freeze(svc: Service) -> None:
    """Stop every thread of ``svc`` that touches the catalog on its own (as SIGSTOP
    would, for the lease): heartbeat, takeover round, background rounds, endpoint
    supervisor."""
    svc.ctx.replica._beat.stop()
    for thread in (svc.takeover, svc.reconciler, svc.contact_watch, svc.maintenance):
        thread.stop()
    svc.endpoints.stop_all()


def _replicas(svc: Service) -> dict[str, replicarepo.ReplicaRow]:
    with svc.ctx.db.tx() as conn:
        return {r.id: r for r in replicarepo.listing(conn)}


def test_replicas_register_and_renew(two: tuple[Service, Service]) -> None:
    a, b = two
    rows = _replicas(a)
    assert set(rows) == {"ra", "rb"}
    assert rows["ra"].node == "ra" and rows["ra"].state == "live"
    assert rows["ra"].epoch == a.ctx.replica.epoch != rows["rb"].epoch == b.ctx.replica.epoch
    first = rows["ra"].heartbeat
    time.sleep(1.5)  # longer than the lease: the heartbeat keeps it
    again = _replicas(b)["ra"]
    assert again.heartbeat > first and again.lease_left > 0 and again.state == "live"
    b.takeover.tick()  # nothing expired: nobody fenced
    assert _replicas(a)["ra"].epoch == a.ctx.replica.epoch
    a.containers.create("pool", "64M")  # both still write
    b.containers.create("pool2", "64M")


def test_a_replica_past_its_lease_is_fenced_and_its_operation_taken_over(
    tmp_path: str, pg_url: str, two: tuple[Service, Service], patterns: Patterns
) -> None:
    a, b = two
    a.containers.create("pool", "64M")
    v = a.vvols.create("pool", "8M", name="d")
    patterns.write(v["path"], "A", [0, 3 * CHUNK])
    sha = patterns.sha(v["path"])
    # ra journals a clone, then freezes (its heartbeat stops) before finishing it
    op = a.ctx.new_op()
    with a.ctx.db.tx() as conn:
        a.ctx.journal(conn, op, "clone", None, {"source": v["id"]})
        mine = text("SELECT owner, owner_epoch FROM journal WHERE id = :i")
        owner = conn.execute(mine, {"i": op})
        assert tuple(owner.one()) == ("ra", a.ctx.replica.epoch)
    _freeze(a)
    time.sleep(1.3)
    b.takeover.tick()
    assert b.takeover.taken and b.takeover.taken[-1]["replica"] == "ra"
    assert [d["id"] for d in b.takeover.taken[-1]["recovered"]] == [op]
    assert "ra" not in _replicas(b)  # its row went once its operations were done
    with b.ctx.db.tx() as conn:
        assert repo.journal_list(conn) == []
    # a new process registers as ra before the frozen one wakes: it never gets the
    # frozen one's epoch back, though the row that held it is gone
    again = _service(os.path.join(tmp_path, "a2"), pg_url, "ra")
    try:
        assert again.ctx.replica.epoch > a.ctx.replica.epoch
        # ra resumes: every transaction is refused, nothing it tries lands
        with pytest.raises(ReplicaFenced, match="ra lost its lease"):
            a.vvols.create("pool", "8M", name="late")
        again.containers.create("pool2", "64M")
    finally:
        again.close()
    a.ctx.replica.beat()  # a heartbeat cannot bring it back
    with pytest.raises(ReplicaFenced):
        a.containers.create("late", "8M")
    assert {x["name"] for x in b.vvols.listing()} == {"d"}
    assert patterns.sha(v["path"]) == sha
    report = b.audit()
    assert report["ok"], report["problems"]
    events = b.ctx.events.read(UNIX_ADMIN)["events"]
    taken = [e for e in events if e["kind"] == "replica.taken-over"]
    assert len(taken) == 1 and taken[0]["subject"] == "ra"


def test_a_late_replica_renews_its_lapsed_lease_in_the_transaction(
    two: tuple[Service, Service],
) -> None:
    """Nobody took over: a replica that missed heartbeats writes again, and a
    takeover that comes after that renewal finds the lease alive."""
    a, b = two
    b.takeover.stop()  # its own round would take over meanwhile
    _freeze(a)
    time.sleep(1.3)
    assert _replicas(b)["ra"].lease_left < 0
    a.containers.create("pool", "64M")  # the check renewed the lease
    assert _replicas(b)["ra"].lease_left > 0
    b.takeover.tick()
    assert _replicas(b)["ra"].state == "live" and a.ctx.replica.fenced is None


def test_lease_settings_are_checked() -> None:
    with pytest.raises(InvalidInput, match="twice the heartbeat"):
        ReplicaSettings(lease=1.0, heartbeat=1.0).checked()
    with pytest.raises(InvalidInput, match="node name"):
        ReplicaSettings(node="x" * 65).checked()
    generated = ReplicaSettings(node="n1").checked()
    assert generated.replica.startswith("n1-") and generated.replica != "n1-"


def test_database_locks_exclude_across_replicas_and_die_with_the_session(pg_url: str) -> None:
    url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    one = create_engine(url, connect_args={"application_name": application_name("l1")})
    two = create_engine(url, connect_args={"application_name": application_name("l2")})
    try:
        first, second = DbLockTable(one), DbLockTable(two)
        order: list[str] = []
        held = threading.Event()

        def holder() -> None:
            with first.hold(["vvol-b", "host:h1"]):
                held.set()
                time.sleep(0.5)
                order.append("first done")

        thread = threading.Thread(target=holder)
        thread.start()
        held.wait(5)
        with second.hold(["host:h1"]):
            order.append("second in")
        thread.join()
        assert order == ["first done", "second in"]
        with second.hold(["vvol-c"]):  # other keys never wait
            pass

        # a frozen holder: its session is terminated by name, which frees its locks
        stuck = threading.Event()
        release = threading.Event()

        def frozen() -> None:
            try:
                with first.hold(["vvol-x"]):
                    stuck.set()
                    release.wait(10)
            except Exception:  # noqa: BLE001 - its session was ended under it
                pass

        thread = threading.Thread(target=frozen)
        thread.start()
        stuck.wait(5)
        with two.begin() as conn:
            assert replicarepo.end_sessions(conn, application_name("l1")) >= 1
        start = time.monotonic()
        with second.hold(["vvol-x"]):
            assert time.monotonic() - start < 5
        release.set()
        thread.join()
    finally:
        one.dispose()
        two.dispose()


def test_serve_refuses_a_lease_shorter_than_two_heartbeats(tmp_path: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vvhost", "--socket", os.path.join(tmp_path, "s.sock"), "serve"]
        + ["--state-dir", os.path.join(tmp_path, "st"), "--lease", "1", "--heartbeat", "1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and "at least twice the heartbeat" in out.stderr


def test_a_replica_restarted_under_the_same_id_fences_its_earlier_process(
    tmp_path: str, pg_url: str, two: tuple[Service, Service]
) -> None:
    """ra freezes with an operation journaled; a new process of ra waits for the old
    lease, takes the row over (a new epoch) and rolls the operation back itself."""
    a, b = two
    b.takeover.stop()  # leave it to ra's next process
    op = a.ctx.new_op()
    with a.ctx.db.tx() as conn:
        a.ctx.journal(conn, op, "clone", None, {})
    _freeze(a)
    left = _replicas(b)["ra"].lease_left
    start = time.monotonic()
    again = _service(os.path.join(tmp_path, "a2"), pg_url, "ra")
    try:
        assert left > 0 and time.monotonic() - start >= left - 0.1  # waited for the old lease
        assert again.ctx.replica.epoch > a.ctx.replica.epoch
        assert _replicas(b)["ra"].epoch == again.ctx.replica.epoch
        assert [r["id"] for r in again.recovered] == [op]
        with pytest.raises(ReplicaFenced):
            a.containers.create("late", "8M")
        again.containers.create("pool", "64M")
    finally:
        again.close()
