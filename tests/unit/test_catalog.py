"""The catalog on its own: migrations, capacity reservation, optimistic updates,
journal, and that every journaled operation has a recovery handler."""

from __future__ import annotations

import os
import threading
import time

import pytest

from vvhost.arrays import DirSettings
from vvhost.catalog import repo, vvolrepo
from vvhost.catalog.db import MIGRATIONS, Database, sqlite_url
from vvhost.errors import StaleGeneration
from vvhost.locks import LockTable
from vvhost.model import Array, Container, JournalEntry, Vvol
from vvhost.service.recovery import HANDLERS


@pytest.fixture
def db(tmp_path: str) -> Database:
    return Database(sqlite_url(os.path.join(tmp_path, "c.db")))


def _container(db: Database, capacity: int = 100) -> Container:
    c = Container(
        id="c1",
        name="pool",
        capacity=capacity,
        provisioned=0,
        tenant=None,
        arrays=[],
        created=time.time(),
    )
    with db.tx() as conn:
        # the array the vvols below name: PostgreSQL checks foreign keys, SQLite does not
        repo.insert_array(
            conn, Array("a1", "a1", "dir", DirSettings("/nonexistent"), {}, time.time())
        )
        repo.insert_container(conn, c)
    return c


def _vvol(vid: str, parent: str | None = None) -> Vvol:
    return Vvol(
        id=vid,
        name=vid,
        type="data",
        container="c1",
        array="a1",
        size=10,
        parent=parent,
        relation="snapshot" if parent else None,
        readonly=bool(parent),
        state="ready",
        op=None,
        generation=1,
        refs=0,
        created=time.time(),
        metadata={"k": "v"},
    )


def test_migrations_are_versioned_and_idempotent(tmp_path: str) -> None:
    url = sqlite_url(os.path.join(tmp_path, "c.db"))
    first = Database(url)
    assert first.version() == len(MIGRATIONS)
    first.close()
    again = Database(url)
    assert again.migrate() == len(MIGRATIONS)
    with again.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_reserve_is_atomic_under_contention(db: Database) -> None:
    _container(db, capacity=100)
    wins: list[bool] = []

    def grab() -> None:
        with db.tx() as conn:
            wins.append(repo.reserve(conn, "c1", 7))

    threads = [threading.Thread(target=grab) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 14  # 14 * 7 = 98 <= 100 < 105
    with db.tx() as conn:
        assert repo.get_container(conn, "c1").provisioned == 98  # type: ignore[union-attr]


def test_optimistic_generation(db: Database) -> None:
    _container(db)
    with db.tx() as conn:
        vvolrepo.insert(conn, _vvol("v1"))
        v = vvolrepo.get(conn, "v1")
    assert v is not None and v.metadata == {"k": "v"}
    with db.tx() as conn:
        vvolrepo.change(conn, v, metadata={"k": "w"})
    with pytest.raises(StaleGeneration), db.tx() as conn:
        vvolrepo.change(conn, v, metadata={"k": "x"})  # v is one generation behind now
    with db.tx() as conn:
        fresh = vvolrepo.get(conn, "v1")
    assert fresh is not None and (fresh.generation, fresh.metadata) == (2, {"k": "w"})


def test_refs_and_dependants(db: Database) -> None:
    _container(db)
    with db.tx() as conn:
        vvolrepo.insert(conn, _vvol("base"))
        for n in range(3):
            vvolrepo.insert(conn, _vvol(f"s{n}", parent="base"))
            vvolrepo.add_ref(conn, "base", 1)
        assert [d.id for d in vvolrepo.dependants(conn, "base")] == ["s0", "s1", "s2"]
        assert vvolrepo.count_dependants(conn, "base") == 3
        assert vvolrepo.get(conn, "base").refs == 3  # type: ignore[union-attr]


def test_journal_round_trip(db: Database) -> None:
    with db.tx() as conn:
        repo.journal_add(
            conn,
            JournalEntry(
                id="op1", op="revert", vvol="v", step="begin", args={"to": "s"}, created=1.0
            ),
        )
        repo.journal_step(conn, "op1", "committed")
        (entry,) = repo.journal_list(conn)
        assert (entry.step, entry.args) == ("committed", {"to": "s"})
        repo.journal_remove(conn, "op1")
        assert repo.journal_list(conn) == []


def test_every_operation_has_recovery_handlers() -> None:
    ops = {
        "create",
        "snapshot",
        "clone",
        "delete",
        "extend",
        "revert",
        "move",
        "relocate",
        "copy-diffs",
    }
    assert set(HANDLERS) == ops


def test_locks_are_taken_in_sorted_order() -> None:
    locks = LockTable()
    order: list[str] = []

    def a() -> None:
        with locks.hold(["x", "y"]):
            order.append("a")

    def b() -> None:
        with locks.hold(["y", "x", None]):
            order.append("b")

    threads = [threading.Thread(target=f) for f in (a, b) * 50]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(order) == 100  # no deadlock between opposite orders
    assert len(locks) == 0  # and nothing is left behind
