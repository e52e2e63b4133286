"""The catalog on a private PostgreSQL: the catalog unit tests run again on it,
control planes starting together migrate once, the catalog URL is checked, and
``vvhost serve`` says in one line when it cannot open its catalog."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from sqlalchemy import inspect

from tests.unit.test_catalog import (  # the same tests, on PostgreSQL (the db fixture below)
    test_journal_round_trip,
    test_optimistic_generation,
    test_refs_and_dependants,
    test_reserve_is_atomic_under_contention,
)
from vvhost.catalog import tenancy
from vvhost.catalog.db import MIGRATIONS, Database, catalog_url, is_postgres
from vvhost.catalog.schema import metadata
from vvhost.errors import CatalogUnreachable
from vvhost.pglab import PgLab

__all__ = [
    "test_journal_round_trip",
    "test_optimistic_generation",
    "test_refs_and_dependants",
    "test_reserve_is_atomic_under_contention",
]


@pytest.fixture
def db(pg_url: str) -> Database:
    database = Database(pg_url)
    yield database  # type: ignore[misc]
    database.close()


def test_planes_starting_together_migrate_once(pg_url: str) -> None:
    opened: list[Database] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Database(pg_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(opened) == 4
    try:
        for database in opened:
            assert database.version() == len(MIGRATIONS)
        with opened[0].engine.connect() as conn:
            assert is_postgres(conn)
            assert set(metadata.tables) <= set(inspect(conn).get_table_names())
            assert len(conn.execute(metadata.tables["schema_version"].select()).all()) == 1
            names = {i["name"] for i in inspect(conn).get_indexes("pe_targets")}
            assert "ux_pe_targets_tid" in names
    finally:
        for database in opened:
            database.close()


def test_sequences_never_repeat_across_threads(db: Database) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(25):
            with db.tx() as conn:
                value = tenancy.next_value(conn, "n")
            with lock:
                got.append(value)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 201))
    with db.tx() as conn:
        first = tenancy.get_or_init(conn, "inst", 7)
        again = tenancy.get_or_init(conn, "inst", 9)
    assert (first, again) == (7, 7)


def test_catalog_urls() -> None:
    assert catalog_url("postgresql://u@h/db").startswith("postgresql+psycopg://u@h/db")
    assert catalog_url("postgres://u@h/db").startswith("postgresql+psycopg://")
    assert catalog_url("sqlite:////x/c.db") == "sqlite:////x/c.db"
    with pytest.raises(CatalogUnreachable) as err:
        Database("postgresql://nobody@/nodb?host=/nonexistent&port=1")
    assert "cannot open the catalog" in err.value.message


def test_serve_reports_a_catalog_it_cannot_open(tmp_path: str, pg_server: PgLab) -> None:
    missing = pg_server.url("no_such_database")
    cases = {missing: 7, "mysql://x/y": 2}
    for url, code in cases.items():
        out = subprocess.run(
            [sys.executable, "-m", "vvhost", "--socket", os.path.join(tmp_path, "s.sock")]
            + ["serve", "--state-dir", os.path.join(tmp_path, "st"), "--db-url", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == code, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vvhost: error:"), out.stderr
        assert "Traceback" not in out.stderr


def test_lab_stops_by_pid_and_leaves_nothing() -> None:
    lab = PgLab().start()
    pid, workdir = lab.pid, lab.workdir
    assert pid is not None and os.path.exists(f"/proc/{pid}")
    url = lab.create_database("probe")
    Database(url).close()
    lab.drop_database("probe")
    lab.stop()
    assert not os.path.exists(f"/proc/{pid}") and not os.path.exists(workdir)
