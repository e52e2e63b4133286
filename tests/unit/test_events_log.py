"""The event log's catalog side on a private SQLite file: cursor and since
queries (and that they are index lookups), tenancy filtering, retention, the
reconciler's finding bookkeeping and how findings are named."""

from __future__ import annotations

import os

from vvhost.catalog import eventrepo
from vvhost.catalog.db import Database, sqlite_url
from vvhost.catalog.eventrepo import Event
from vvhost.service.reconciler import finding_kind, subject_of


def db_at(tmp_path: str) -> Database:
    return Database(sqlite_url(os.path.join(str(tmp_path), "catalog.db")))


def test_cursor_since_and_tenancy(tmp_path: str) -> None:
    db = db_at(tmp_path)
    with db.tx() as conn:
        for i in range(20):
            eventrepo.insert(
                conn, Event("t.tick", f"m{i}", tenant="a" if i % 2 else "b", time=1000.0 + i)
            )
        assert [e.message for e in eventrepo.query(conn, since=1017.0)] == ["m17", "m18", "m19"]
        assert [e.id for e in eventrepo.query(conn, after=18)] == [19, 20]
        mine = eventrepo.query(conn, tenant="a", admin=False)
        assert {e.tenant for e in mine} == {"a"} and len(mine) == 10
        assert eventrepo.query(conn, tenant=None, admin=False) == []
        assert eventrepo.query(conn, since=5000.0) == []
        assert eventrepo.last_id(conn) == 20
    db.close()


def test_queries_walk_indexes(tmp_path: str) -> None:
    """The plans SQLite picks: the time index for --since, the primary key for the
    cursor, the (tenant, id) index for a tenant: never a scan of the whole table."""
    db = db_at(tmp_path)
    with db.engine.connect() as conn:
        plans = {
            q: " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + q))
            for q in (
                "SELECT id FROM events WHERE time >= 1 ORDER BY time LIMIT 1",
                "SELECT * FROM events WHERE id > 5 ORDER BY id LIMIT 10",
                "SELECT * FROM events WHERE id > 5 AND tenant = 'a' ORDER BY id LIMIT 10",
            )
        }
    for q, plan in plans.items():
        assert "SCAN" not in plan, (q, plan)
    assert any("ix_events_time" in p for p in plans.values())
    assert any("ix_events_tenant_id" in p for p in plans.values())
    db.close()


def test_retention_and_ids_never_reused(tmp_path: str) -> None:
    db = db_at(tmp_path)
    with db.tx() as conn:
        for i in range(10):
            eventrepo.insert(conn, Event("t.tick", f"m{i}", time=1000.0 + i))
        assert eventrepo.prune(conn, keep=3, before=0.0) == 7
        assert eventrepo.prune(conn, keep=100, before=1008.5) == 2
        assert eventrepo.count(conn) == 1
        new = eventrepo.insert(conn, Event("t.tick", "after"))
        assert new == 11  # a cursor held across retention stays valid
        assert ("t.tick", "info", 11) in eventrepo.counts(conn)
    db.close()


def test_findings_are_reported_once(tmp_path: str) -> None:
    db = db_at(tmp_path)
    with db.tx() as conn:
        new, gone = eventrepo.sync_findings(conn, {"x": "leak.found", "y": "audit.finding"}, 1.0)
        assert sorted(new) == [("x", "leak.found"), ("y", "audit.finding")] and gone == []
        new, gone = eventrepo.sync_findings(conn, {"x": "leak.found"}, 2.0)
        assert new == [] and gone == [("y", "audit.finding")]
        assert eventrepo.findings_by_kind(conn) == [("leak.found", 1)]
    db.close()


def test_finding_names() -> None:
    orphan = "array local: /srv/a/vvols/1.raw has no catalog row"
    assert finding_kind(orphan) == "leak.found" and subject_of(orphan) == "array:local"
    stale = "endpoint iscsi1 presents 1/9, which no binding wants"
    assert finding_kind(stale) == "leak.found" and subject_of(stale) == "pe:iscsi1"
    failed = "vvol 1234 is failed: disk gone"
    assert finding_kind(failed) == "audit.finding" and subject_of(failed) == "vvol:1234"
    assert subject_of("operation create 1 is unfinished at step begin") == ""
