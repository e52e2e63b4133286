"""The counting rules of the space model (vvhost/spacemodel.py), and admission
against a real catalog (SQLite) without any array."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from vvhost import spacemodel as sm
from vvhost.catalog import repo, spacerepo, vvolrepo
from vvhost.catalog.db import Database, sqlite_url
from vvhost.errors import InvalidInput
from vvhost.model import CLONE, READY, SNAPSHOT, Array, Container, Vvol

MiB = 1 << 20
GiB = 1 << 30


def test_writable_vvols_count_their_size_and_allocation() -> None:
    f = sm.Figures(allocated=128 * MiB, unique=128 * MiB)
    assert sm.charge(512 * MiB, None, f) == 512 * MiB
    assert sm.held(None, f) == 128 * MiB
    assert not sm.thin(None)


@pytest.mark.parametrize("relation", [SNAPSHOT, CLONE])
def test_snapshots_and_linked_clones_count_unique_bytes(relation: str) -> None:
    shared = sm.Figures(allocated=128 * MiB, unique=0)  # a fresh reflink/RBD snapshot
    assert sm.charge(512 * MiB, relation, shared) == 0
    assert sm.held(relation, shared) == 0
    diverged = sm.Figures(allocated=128 * MiB, unique=32 * MiB)
    assert sm.charge(512 * MiB, relation, diverged) == 32 * MiB
    assert sm.held(relation, diverged) == 32 * MiB
    # an array that cannot tell shared from unique: allocated (never less than the truth)
    unknown = sm.Figures(allocated=128 * MiB, unique=None)
    assert sm.charge(512 * MiB, relation, unknown) == 128 * MiB


def test_copy_estimate() -> None:
    assert sm.copy_estimate(True, 128 * MiB) == 0
    assert sm.copy_estimate(False, 128 * MiB) == 128 * MiB


def test_reserve_and_overcommit_parsing() -> None:
    assert sm.parse_reserve("5%", 1000 * MiB) == 50 * MiB
    assert sm.parse_reserve("2G", 10 * GiB) == 2 * GiB
    assert sm.parse_reserve("0", GiB) == 0
    for bad in ("100%", "-1%", "x%", "2G"):
        with pytest.raises(InvalidInput):
            sm.parse_reserve(bad, GiB)
    assert sm.parse_overcommit("4.0") == 4.0
    for bad in ("0.5", "abc", "1000"):
        with pytest.raises(InvalidInput):
            sm.parse_overcommit(bad)
    assert sm.limit(500 * GiB, 4.0) == 2000 * GiB


def _usage(**kw: int | float) -> sm.Usage:
    base: dict[str, int | float] = dict(
        capacity=GiB, overcommit=1.0, reserve=0, provisioned=0, allocated=0, unique=0,
        used=0, vvols=0,
    )  # fmt: skip
    base.update(kw)
    return sm.Usage(**base)  # type: ignore[arg-type]


def test_usage_and_shrinking() -> None:
    u = _usage(provisioned=768 * MiB, used=300 * MiB, overcommit=2.0)
    assert u.limit == 2 * GiB and u.free == 2 * GiB - 768 * MiB
    assert u.physical_free == GiB - 300 * MiB
    assert u.fraction == pytest.approx(768 / 2048)  # the fuller side: provisioning
    assert sm.shrink_problem(u, GiB, 1.0, 0) is None  # 768M fits 1G x 1.0
    assert "provisioned" in (sm.shrink_problem(u, 512 * MiB, 1.0, 0) or "")
    assert "in use" in (sm.shrink_problem(u, 256 * MiB, 4.0, 0) or "")
    assert "reserve" in (sm.shrink_problem(u, GiB, 1.0, 800 * MiB) or "")


def test_threshold_crossings_are_rising_edges() -> None:
    assert sm.crossed(0.5, 0.85) == [0.8]
    assert sm.crossed(0.5, 0.95) == [0.8, 0.9]
    assert sm.crossed(0.85, 0.95) == [0.9]
    assert sm.crossed(0.95, 0.5) == []
    assert sm.crossed(0.9, 0.92) == []


# -- the catalog half: charges kept by admission and by refreshed figures --------------------


def _vvol(c: Container, size: int, relation: str | None, charge: int) -> Vvol:
    return Vvol(
        id=str(uuid.uuid4()), name=None, type="data", container=c.id, array="a", size=size,
        parent=None, relation=relation, readonly=relation == SNAPSHOT, state=READY, op=None,
        generation=1, refs=0, created=time.time(), charge=charge,
    )  # fmt: skip


def test_catalog_keeps_provisioned_equal_to_the_charges(tmp_path: str) -> None:
    db = Database(sqlite_url(os.path.join(tmp_path, "c.db")))
    try:
        with db.tx() as conn:
            repo.insert_array(
                conn, Array(id="a", name="a", backend="dir", settings=_dir(tmp_path),
                            capabilities={}, created=0.0)
            )  # fmt: skip
            c = Container(
                id="c", name="pool", capacity=GiB, provisioned=0, tenant=None,
                arrays=["a"], created=0.0, overcommit=2.0,
            )  # fmt: skip
            repo.insert_container(conn, c)
            assert repo.reserve(conn, c.id, 2 * GiB)  # capacity x 2
            assert not repo.reserve(conn, c.id, 1)
            repo.reserve(conn, c.id, -2 * GiB)
            base = _vvol(c, 512 * MiB, None, 512 * MiB)
            snap = _vvol(c, 512 * MiB, SNAPSHOT, 0)
            assert repo.reserve(conn, c.id, base.charge)
            vvolrepo.insert(conn, base)
            vvolrepo.insert(conn, snap)
            # the array reports: base 128M written, the snapshot diverged by 32M
            spacerepo.record(conn, base.id, allocated=128 * MiB, unique=32 * MiB,
                             charge=512 * MiB, held=128 * MiB)  # fmt: skip
            delta = spacerepo.record(conn, snap.id, allocated=128 * MiB, unique=32 * MiB,
                                     charge=32 * MiB, held=32 * MiB)  # fmt: skip
            assert delta == 32 * MiB
            fresh = repo.get_container(conn, c.id)
            assert fresh is not None
            u = spacerepo.usage(conn, fresh)
            assert u.provisioned == 544 * MiB == repo.recount_provisioned(conn, c.id)
            assert (u.allocated, u.unique, u.used, u.vvols) == (256 * MiB, 64 * MiB, 160 * MiB, 2)
            assert [s.id for s in spacerepo.stale(conn, time.time() + 1, 10)] != []
            assert spacerepo.stale(conn, 0.0, 10) == []
    finally:
        db.close()


def _dir(path: str) -> object:
    from vvhost.arrays import settings_from

    return settings_from("dir", {"path": str(path)})


def test_migration_charges_existing_vvols_their_size(tmp_path: str) -> None:
    """A catalog from before ``_v9_space``: every vvol keeps being charged its size
    (what ``provisioned`` counted), containers get ratio 1.0 and no reserve."""
    url = sqlite_url(os.path.join(tmp_path, "old.db"))
    db = Database(url)
    with db.tx() as conn:
        for table, column in (
            ("containers", "overcommit"), ("containers", "reserve"),
            ("containers", "reserve_spec"), ("vvols", "allocated"), ("vvols", "unique_bytes"),
            ("vvols", "charge"), ("vvols", "held"), ("vvols", "space_at"),
        ):  # fmt: skip
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.exec_driver_sql("UPDATE schema_version SET version = 8")
        conn.exec_driver_sql(
            "INSERT INTO arrays (id, name, backend, capabilities, created) "
            "VALUES ('a', 'a', 'dir', '{}', 0)"
        )
        conn.exec_driver_sql(
            "INSERT INTO containers (id, name, capacity, provisioned, created) "
            f"VALUES ('c', 'pool', {GiB}, {64 * MiB}, 0)"
        )
        conn.exec_driver_sql(
            "INSERT INTO vvols (id, type, container_id, array_id, size, readonly, state, "
            "generation, refs, created, metadata) "
            f"VALUES ('v', 'data', 'c', 'a', {64 * MiB}, 0, 'ready', 1, 0, 0, '{{}}')"
        )
    db.close()
    db = Database(url)
    try:
        assert db.version() >= 9
        with db.tx() as conn:
            c = repo.get_container(conn, "c")
            v = vvolrepo.get(conn, "v")
            assert c is not None and v is not None
            assert (c.overcommit, c.reserve, c.limit) == (1.0, 0, GiB)
            assert (v.charge, v.allocated, v.unique) == (64 * MiB, 0, None)
            assert repo.recount_provisioned(conn, "c") == c.provisioned
    finally:
        db.close()


def test_alert_levels_parse_and_cross() -> None:
    assert sm.parse_alerts("80,90") == (0.8, 0.9)
    assert sm.parse_alerts("50%, 75%, 95") == (0.5, 0.75, 0.95)
    assert sm.alerts_text((0.5, 0.75)) == "50,75"
    for bad in ("90,80", "80,80", "0,50", "50,101", "a,b", "", "10,20,30,40,50"):
        with pytest.raises(InvalidInput):
            sm.parse_alerts(bad)
    assert sm.crossed(0.4, 0.8, (0.5, 0.75)) == [0.5, 0.75]
    assert sm.crossed(0.5, 0.7, (0.5, 0.75)) == []  # already past 50 %: no new edge
