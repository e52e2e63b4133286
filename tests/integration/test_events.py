"""The event log: operations leave events with who, how long and how they ended;
the cursor resumes without missing or repeating; --follow sees new events;
retention bounds the table; a tenant never sees another tenant's events."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.patterns import Patterns
from tests.tenancylab import tls_lab
from vvhost.api.app import create_app
from vvhost.catalog import eventrepo
from vvhost.client import Client
from vvhost.errors import Forbidden, InvalidInput, Unreachable, VvhostError
from vvhost.service import Config, Service
from vvhost.service.events import Retention, parse_since
from vvhost.service.tenancy import UNIX_ADMIN


@pytest.fixture
def svc(tmp_path: str) -> Iterator[Service]:
    s = Service(Config(state_dir=os.path.join(str(tmp_path), "state"), reconcile_interval=0))
    s.start()
    yield s
    s.close()


def ops(events: list[dict]) -> list[dict]:
    return [e for e in events if e["kind"].startswith("op.")]


def test_operations_leave_events_with_who_how_long_and_outcome(svc: Service) -> None:
    client = Client.in_process(create_app(svc))
    svc.containers.create("c1", "1G")
    v = client.vvol_create("c1", "8M", name="v1")
    client.vvol_snapshot("v1", name="v1@s")
    client.vvol_delete("v1@s")
    got = ops(client.events()["events"])
    assert [(e["fields"]["op"], e["fields"]["outcome"]) for e in got] == [
        ("create", "finished"),
        ("snapshot", "finished"),
        ("delete", "finished"),
    ]
    first = got[0]
    assert first["kind"] == "op.finished" and first["subject"] == f"vvol:{v['id']}"
    assert first["fields"]["who"] == "admin:unix-socket"
    assert 0 <= first["fields"]["seconds"] < 60
    assert first["message"].startswith("create of vvol v1 finished after ")
    assert first["message"].endswith("(by admin:unix-socket)")
    client.close()


def test_failed_operation_is_an_error_event(svc: Service) -> None:
    client = Client.in_process(create_app(svc))
    svc.containers.create("c1", "1G")
    v = client.vvol_create("c1", "8M", name="v1")
    op = svc.ctx.new_op()
    with svc.ctx.db.tx() as conn:
        svc.ctx.journal(conn, op, "extend", v["id"], {"size": 1 << 30})
    svc.ctx.fail(op, [v["id"]], "the array refused to grow it")
    failed = [e for e in client.events()["events"] if e["kind"] == "op.failed"]
    assert len(failed) == 1
    assert failed[0]["severity"] == "error"
    assert failed[0]["fields"]["outcome"] == "failed"
    assert failed[0]["fields"]["error"] == "the array refused to grow it"
    client.close()


def test_cursor_resumes_without_missing_or_repeating(svc: Service) -> None:
    log = svc.ctx.events
    ids = [log.emit("test.tick", f"tick {i}") for i in range(25)]
    seen: list[int] = []
    cursor = 0
    while True:
        page = log.read(UNIX_ADMIN, after=cursor, limit=7)
        seen += [e["id"] for e in page["events"]]
        if not page["events"]:
            break
        cursor = page["cursor"]
    assert seen == ids
    # --since: from a time on
    cut = time.time()
    later = [log.emit("test.tick", f"late {i}") for i in range(3)]
    assert [e["id"] for e in log.read(UNIX_ADMIN, since=cut)["events"]] == later


def test_long_poll_wakes_on_a_new_event(svc: Service) -> None:
    log = svc.ctx.events
    cursor = log.read(UNIX_ADMIN)["cursor"]
    threading.Timer(0.5, lambda: log.emit("test.late", "arrived late")).start()
    t0 = time.monotonic()
    page = log.read(UNIX_ADMIN, after=cursor, wait=10)
    assert [e["kind"] for e in page["events"]] == ["test.late"]
    assert time.monotonic() - t0 < 5
    # nothing new: the poll returns empty after its wait, cursor unchanged
    again = log.read(UNIX_ADMIN, after=page["cursor"], wait=0.3)
    assert again == {"events": [], "cursor": page["cursor"]}


def test_retention_keeps_the_newest(svc: Service) -> None:
    log = svc.ctx.events
    log.retention = Retention(keep=10, days=1)
    for i in range(30):
        log.emit("test.tick", f"tick {i}")
    with svc.ctx.db.tx() as conn:
        eventrepo.insert(conn, eventrepo.Event("test.old", "ancient", time=time.time() - 3 * 86400))
    # 31 events: the 21 beyond the newest 10 go, and the ancient one (too old) too
    assert log.prune() == 22
    left = log.read(UNIX_ADMIN)["events"]
    assert [e["message"] for e in left] == [f"tick {i}" for i in range(21, 30)]
    with svc.ctx.db.tx() as conn:  # the counters keep counting past retention
        assert ("test.tick", "info", 30) in eventrepo.counts(conn)


def test_bad_input_is_refused(svc: Service) -> None:
    with pytest.raises(InvalidInput):
        svc.ctx.events.emit("x", "y", severity="loud")
    with pytest.raises(InvalidInput):
        parse_since("yesterday")
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200


def test_tenant_never_sees_another_tenants_events(tmp_path: str) -> None:
    patterns = Patterns()
    with tls_lab(str(tmp_path), patterns) as t:
        a, b = t.as_host("ha"), t.as_host("hb")
        try:
            later = a.vvol_snapshot("va2", name="va2@later")["id"]
            b.vvol_delete("vb")
            t.admin.vvol_delete(later)  # an admin's operation on alpha's vvol is alpha's event
            admin_all = t.admin.events()["events"]
            seen_a = a.events()["events"]
            seen_b = b.events()["events"]
            assert seen_a and seen_b
            assert {e["tenant"] for e in seen_a} == {"alpha"}
            assert {e["tenant"] for e in seen_b} == {"beta"}
            ids_a = {t.ids[k] for k in ("va", "sa", "va2")}
            ids_b = {t.ids["vb"]}
            text_b = json.dumps(seen_b)
            assert not any(i in text_b for i in ids_a), "tenant B saw tenant A's vvols"
            assert not any(i in json.dumps(seen_a) for i in ids_b)
            assert {e["fields"]["who"] for e in ops(seen_b)} == {"host:hb"}
            deleted = [e for e in ops(seen_a) if e["fields"]["vvol"] == later]
            assert [(e["fields"]["op"], e["fields"]["who"]) for e in deleted] == [
                ("snapshot", "host:ha"),
                ("delete", "admin:unix-socket"),
            ]
            # the admin sees both, and B's cursor skips A's events for good
            assert {e["tenant"] for e in admin_all} >= {"alpha", "beta"}
            follow_b = b.events(cursor=b.events()["cursor"], wait=0.5)
            a.vvol_create(None, "8M", name="va3", datastore="ds-a")
            assert follow_b["events"] == []
            assert b.events(cursor=follow_b["cursor"])["events"] == []
            # hostile: a host cannot read health, metrics or repair
            for call in (b.health_report, b.metrics, b.audit_fix):
                with pytest.raises(Forbidden) as err:
                    call()
                assert "admin" in str(err.value)
        finally:
            a.close()
            b.close()


def test_cli_events_follow_prints_new_events(tmp_path: str) -> None:
    from vvhost.daemon import ServerProcess

    server = ServerProcess(
        os.path.join(str(tmp_path), "state"), os.path.join(str(tmp_path), "s.sock")
    ).start()
    try:
        admin = server.client()
        admin.container_create("c1", "1G")
        admin.vvol_create("c1", "8M", name="v1")
        cmd = [sys.executable, "-m", "vvhost", "--socket", server.socket]
        out = subprocess.run(cmd + ["events", "--json"], capture_output=True, text=True, check=True)
        listed = json.loads(out.stdout)
        assert [e["fields"]["op"] for e in ops(listed["events"])] == ["create"]
        follow = subprocess.Popen(
            cmd + ["events", "--follow", "--json", "--cursor", str(listed["cursor"])],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            admin.vvol_create("c1", "8M", name="v2")
            line = follow.stdout.readline() if follow.stdout else ""
            ev = json.loads(line)
            assert ev["kind"] == "op.finished" and ev["fields"]["op"] == "create"
            assert ev["id"] > listed["cursor"]
        finally:
            follow.terminate()
            follow.wait(10)
        bad = subprocess.run(cmd + ["events", "--since", "soon"], capture_output=True, text=True)
        assert bad.returncode == 2
        assert bad.stderr.strip().count("\n") == 0 and "--since" in bad.stderr
        admin.close()
    finally:
        server.stop()


def test_lease_taken_from_a_silent_host_is_an_event(svc: Service) -> None:
    from vvhost.service.leases import LeaseOps

    svc.containers.create("c1", "1G")
    vm = svc.vvols.create("c1", "1M", type="config", name="vm1")
    leases = LeaseOps(svc.ctx)
    leases.acquire("vm1", "h1", "start", 4242, ttl=1.0)
    time.sleep(1.2)  # h1 stops renewing
    leases.acquire("vm1", "h2", "start", 4343, ttl=30.0)
    taken = [
        e for e in svc.ctx.events.read(UNIX_ADMIN)["events"] if e["kind"] == "lease.taken-over"
    ]
    assert len(taken) == 1
    assert taken[0]["subject"] == "host:h1" and taken[0]["severity"] == "warning"
    assert taken[0]["fields"] == {
        "vm": vm["id"],
        "from": "h1",
        "to": "h2",
        "op": "start",
        "dead": False,
    }


def test_operation_rolled_back_after_a_crash_is_an_event(tmp_path: str) -> None:
    """A create killed mid-way (kill -9 of vvhost serve) is rolled back by recovery
    at the next start, and the log says so: its caller, its vvol, "rolled back"."""
    from vvhost.daemon import ServerProcess
    from vvhost.faults import FAULT_ENV, FAULT_MARK

    state = os.path.join(str(tmp_path), "state")
    sock = os.path.join(str(tmp_path), "s.sock")
    server = ServerProcess(state, sock, env={FAULT_ENV: "create:file-created"}).start()
    try:
        admin = server.client()
        admin.container_create("c1", "1G")

        def create() -> None:
            with contextlib.suppress(Unreachable):  # the server dies under it
                admin.vvol_create("c1", "8M", name="v1")

        hung = threading.Thread(target=create, daemon=True)
        hung.start()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(state, FAULT_MARK)):
            assert time.monotonic() < deadline, "the create never reached its fault point"
            time.sleep(0.1)
        server.kill()
        hung.join(30)
        admin.close()
        os.unlink(os.path.join(state, FAULT_MARK))
    finally:
        server.stop()
    server = ServerProcess(state, sock).start()
    try:
        admin = server.client()
        got = ops(admin.events()["events"])
        assert len(got) == 1, got
        ev = got[0]
        assert ev["kind"] == "op.failed" and ev["severity"] == "warning"
        assert ev["fields"]["op"] == "create" and ev["fields"]["outcome"] == "rolled back"
        assert ev["fields"]["who"] == "admin:unix-socket"
        assert admin.vvols() == [] and admin.audit()["ok"]
        admin.close()
    finally:
        server.stop()


def test_undone_operation_says_why(svc: Service) -> None:
    """A clone whose source lost its data fails, is undone, and its event says why."""
    client = Client.in_process(create_app(svc))
    svc.containers.create("c1", "1G")
    v = client.vvol_create("c1", "8M", name="v1")
    path = client.vvol(v["id"])["path"]
    os.unlink(path)  # the array lost the data under vvhost: a directory in its place
    os.mkdir(path)
    with pytest.raises(VvhostError) as err:
        client.vvol_clone("v1", name="c", linked=False)
    failed = [e for e in client.events()["events"] if e["kind"] == "op.failed"]
    assert len(failed) == 1, failed
    assert failed[0]["fields"]["op"] == "clone"
    assert failed[0]["fields"]["outcome"] == "rolled back"
    assert failed[0]["fields"]["error"] == err.value.message
    assert failed[0]["message"].endswith(err.value.message)
    assert [x["name"] for x in client.vvols()] == ["v1"]
    client.close()


def test_hosts_report_their_vms_paused_for_space(tmp_path: str) -> None:
    patterns = Patterns()
    with tls_lab(str(tmp_path), patterns) as t:
        a, b = t.as_host("ha"), t.as_host("hb")
        try:
            first = a.vm_event("ha", "web", "paused-for-space", ["vdb"])
            assert first["recorded"] is True
            # seen again by the next vm show: one event, not one per look
            assert a.vm_event("ha", "web", "paused-for-space", ["vdb"]) == {
                "event": first["event"],
                "recorded": False,
            }
            assert a.vm_event("ha", "web", "resumed", [])["recorded"] is True
            assert a.vm_event("ha", "web", "resumed", [])["recorded"] is False
            assert a.vm_event("ha", "idle", "resumed", [])["recorded"] is False  # never paused
            mine = [e for e in a.events()["events"] if e["kind"].startswith("vm.")]
            assert [(e["kind"], e["subject"], e["severity"]) for e in mine] == [
                ("vm.paused-for-space", "vm:ha/web", "warning"),
                ("vm.resumed", "vm:ha/web", "info"),
            ]
            assert mine[0]["fields"] == {"host": "ha", "vm": "web", "disks": ["vdb"]}
            assert {e["tenant"] for e in mine} == {"alpha"}
            # hostile: another tenant's host sees none of it and cannot report for ha
            assert not [e for e in b.events()["events"] if e["kind"].startswith("vm.")]
            with pytest.raises(Forbidden):
                b.vm_event("ha", "web", "paused-for-space", ["vda"])
            for bad in (("../x", "paused-for-space", []), ("web", "exploded", []),
                        ("web", "paused-for-space", ["$(rm)"])):  # fmt: skip
                with pytest.raises(InvalidInput):
                    a.vm_event("ha", *bad)
        finally:
            a.close()
            b.close()
