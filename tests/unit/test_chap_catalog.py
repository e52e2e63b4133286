"""Hosts' CHAP accounts in the catalog: the migration gives existing hosts one,
and every new account has a new user name and secret."""

from __future__ import annotations

import os
import time

from sqlalchemy import text

from vvhost.catalog import bindrepo, chaprepo
from vvhost.catalog.db import MIGRATIONS, Database, _v16_iscsi_chap, sqlite_url
from vvhost.model import Host


def test_migration_gives_existing_hosts_their_own_account(tmp_path: str) -> None:
    db = Database(sqlite_url(os.path.join(tmp_path, "c.db")))
    number = MIGRATIONS.index(_v16_iscsi_chap) + 1
    with db.tx() as conn:  # a catalog from before the migration, with two hosts
        conn.execute(text("DROP TABLE iscsi_chap"))
        conn.execute(text("UPDATE schema_version SET version = :v"), {"v": number - 1})
        for name in ("h1", "h2"):
            bindrepo.insert_host(conn, Host(name=name, iqn=None, created=time.time()))
    db.close()
    db = Database(sqlite_url(os.path.join(tmp_path, "c.db")))
    assert db.version() == len(MIGRATIONS)
    with db.tx() as conn:
        one, two = chaprepo.get(conn, "h1"), chaprepo.get(conn, "h2")
    assert one is not None and two is not None
    assert one[0].startswith("h1.") and two[0].startswith("h2.") and one[1] != two[1]
    db.close()


def test_a_new_account_replaces_the_old_one_with_a_new_name(tmp_path: str) -> None:
    db = Database(sqlite_url(os.path.join(tmp_path, "c.db")))
    with db.tx() as conn:
        first = chaprepo.issue(conn, "h1")
        second = chaprepo.issue(conn, "h1")
        assert chaprepo.get(conn, "h1") == second
        chaprepo.forget(conn, "h1")
        assert chaprepo.get(conn, "h1") is None
    assert first[0] != second[0] and first[1] != second[1]
    assert len(second[1]) == 2 * chaprepo.SECRET_BYTES
    db.close()
