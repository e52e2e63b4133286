"""A big catalog: listings paged by the database give every row once, in the
order the whole listing has; a datastore's totals are counted by the database;
a refresh of many vvols' space figures stores them in short transactions;
the indexes of migration ``_v14_scale_indexes`` are made on an older catalog
and are the ones SQLite's planner uses.  On SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, event, inspect, select, text, update

from tests.openapicheck import Contract, watch
from vvhost.api.app import create_app
from vvhost.api.paging import decode, encode
from vvhost.arrays import DirSettings
from vvhost.catalog import bindrepo, repo, schema, vvolrepo
from vvhost.catalog.db import MIGRATIONS, Database, sqlite_url
from vvhost.client import Client
from vvhost.model import Array, Binding, Container, Vvol
from vvhost.service import Config, Service
from vvhost.service.space import STORE_CHUNK

MiB = 1 << 20
IN_DS, IN_POOL2, OF_T1 = 700, 300, 120  # vvols in the datastore, in the other pool, t1's
HOSTS = ("h0", "h1", "h2")
NEW = {
    "vvols": {
        "ix_vvols_created",
        "ix_vvols_container_created",
        "ix_vvols_datastore",
        "ix_vvols_tenant",
    },
    "bindings": {"ix_bindings_pe_tid"},
    "binding_hints": {"ix_binding_hints_pe_host"},
}


def _url(tmp_path: str, db_url: str | None) -> str:
    return db_url or sqlite_url(os.path.join(tmp_path, "catalog.db"))


@pytest.fixture
def big(tmp_path: str, db_url: str | None) -> Iterator[tuple[Service, Client]]:
    """A plane whose catalog holds 1,000 vvols in two containers (a datastore over
    the first; some of its vvols tenant t1's) and about 1,000 bindings to 3 hosts."""
    config = Config(
        state_dir=os.path.join(tmp_path, "state"),
        db_url=db_url,
        reconcile_interval=0,
        space_refresh=0,
    )
    svc = Service(config)
    svc.start()
    client = Client.in_process(create_app(svc))
    watch(client.http, Contract(client.http.get("/openapi.json").json()))
    try:
        svc.tenants.create("t1")
        svc.containers.create("pool", 1 << 40)
        svc.containers.create("pool2", 1 << 40)
        svc.datastores.create("ds", 1 << 39, ["pool"])
        ids = [
            svc.vvols.create(None, "1M", datastore="ds", tenant="t1" if i < OF_T1 else None)["id"]
            for i in range(IN_DS)
        ]
        for i in range(IN_POOL2):
            svc.vvols.create("pool2", "1M", name=f"p2-{i}")
        svc.pes.create("file", "file", path=os.path.join(tmp_path, "nfs"))
        for k, host in enumerate(HOSTS):
            svc.hosts.add(host)
            mine = ids[k::2]  # h0 and h2 share half the vvols, h1 has the other half
            assert all(r["ok"] for r in svc.bindings.bind(mine, host, pe="file"))
        yield svc, client
    finally:
        client.close()
        svc.close()


def _walk(client: Client, listing: str, limit: int, **filters: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        got = client.page(listing, limit=limit, cursor=cursor, **filters)
        assert len(got["items"]) <= limit
        items += got["items"]
        cursor = got["next"]
        if cursor is None:
            return items


def test_every_listing_pages_each_row_once(big: tuple[Service, Client]) -> None:
    svc, client = big
    whole = svc.vvols.listing()  # the whole listing, unpaged, as before paging moved
    assert len(whole) == IN_DS + IN_POOL2
    order = sorted(whole, key=lambda v: (v["created"], v["id"]))
    for limit, filters in ((97, {}), (1000, {}), (61, {"container": "pool2"})):
        paged = _walk(client, "vvols", limit, **filters)
        want = [v for v in order if "container" not in filters or v["container"] == "pool2"]
        assert [v["id"] for v in paged] == [v["id"] for v in want]
        assert paged == [{k: v[k] for k in p} for p, v in zip(paged, want, strict=True)]
    in_ds = _walk(client, "vvols", 128, datastore="ds")
    assert len(in_ds) == len({v["id"] for v in in_ds}) == IN_DS
    assert {v["id"] for v in in_ds} == {v["id"] for v in whole if v["datastore"]}

    every = sorted((b.vvol, b.host) for b in _bindings(svc))
    assert len(every) == sum(len(range(k, IN_DS, 2)) for k in range(len(HOSTS)))
    handles = _walk(client, "bindings", 113)
    assert [(h["vvol"], h["host"]) for h in handles] == every
    assert all(h["pe"] == "file" and h["protocol"] == "file" for h in handles)
    for host in HOSTS:
        mine = _walk(client, "bindings", 50, host=host)
        assert [(h["vvol"], h["host"]) for h in mine] == [b for b in every if b[1] == host]


def _bindings(svc: Service) -> list[Binding]:
    with svc.ctx.db.tx() as conn:
        return bindrepo.find_bindings(conn)


def test_datastore_totals_are_counted_by_the_database(big: tuple[Service, Client]) -> None:
    svc, client = big
    shown = client.datastore("ds")
    assert shown["vvols"] == IN_DS and shown["provisioned"] == IN_DS * MiB
    assert shown["free"] == (1 << 39) - IN_DS * MiB
    mine = svc.datastores.show("ds", viewer="t1")
    assert mine["vvols"] == OF_T1 and mine["provisioned"] == OF_T1 * MiB
    assert mine["free"] == shown["free"]  # the room is the datastore's, whoever looks
    nobody = svc.datastores.show("ds", viewer=None)
    assert nobody["vvols"] == 0 and nobody["provisioned"] == 0
    began: list[float] = []
    me = threading.get_ident()

    def count(_conn: Any) -> None:
        if threading.get_ident() == me:  # not the plane's background threads
            began.append(time.time())

    start = time.time()
    event.listen(svc.ctx.db.engine, "begin", count)
    try:
        assert svc.space.refresh_container("pool") == IN_DS
    finally:
        event.remove(svc.ctx.db.engine, "begin", count)
    stores = -(-IN_DS // STORE_CHUNK)  # a transaction per chunk: no long write lock
    assert len(began) == 2 + stores  # and one to list the vvols, one to read them
    with svc.ctx.db.tx() as conn:
        read_at = conn.execute(
            select(schema.vvols.c.space_at).where(schema.vvols.c.datastore_id.is_not(None))
        ).scalars()
        assert all(at is not None and at >= start for at in read_at)
    made = client.vvol_create(None, "1M", datastore="ds")["id"]
    client.vvol_snapshot(made)
    counted = client.datastore("ds")["vvols"]
    assert counted >= IN_DS + 1
    client.vvol_delete(made, deferred=True)  # kept for its snapshot, out of the counts
    assert client.vvol(made)["state"] == "deferred"
    assert client.datastore("ds")["vvols"] == counted - 1


def _vvol(vid: str, created: float, container: str = "c1") -> Vvol:
    return Vvol(
        id=vid,
        name=None,
        type="data",
        container=container,
        array="a1",
        size=1,
        parent=None,
        relation=None,
        readonly=False,
        state="ready",
        op=None,
        generation=1,
        refs=0,
        created=created,
        metadata={},
    )


def test_keyset_pages_break_ties_by_id(tmp_path: str, db_url: str | None) -> None:
    """Many vvols made in the same instant (as a batch can): a page boundary inside
    a run of equal times neither repeats nor skips one, through real cursors."""
    db = Database(_url(tmp_path, db_url))
    now = time.time()  # a float with all its digits: the cursor must carry it exactly
    with db.tx() as conn:
        repo.insert_array(conn, Array("a1", "a1", "dir", DirSettings("/nowhere"), {}, now))
        pool = Container(
            id="c1", name="c1", capacity=1, provisioned=0, tenant=None, arrays=[], created=now
        )
        repo.insert_container(conn, pool)
        for i in range(700):
            vvolrepo.insert(conn, _vvol(f"v{(i * 7919) % 700:04d}", now + (i % 5) * 1e-6))
    with db.tx() as conn:
        whole = [v.id for v in vvolrepo.listing(conn)]
    assert len(whole) == 700
    for limit in (1, 13, 140, 699, 700):
        seen: list[str] = []
        cursor: str | None = None
        while True:
            with db.tx() as conn:
                after = decode(cursor, (0.0, "")) if cursor else None
                got = vvolrepo.listing(conn, after=after, limit=limit)
            seen += [v.id for v in got]
            if len(got) < limit:
                break
            cursor = encode((got[-1].created, got[-1].id))
        assert seen == whole
    db.close()


def test_older_catalogs_get_the_scale_indexes(tmp_path: str, db_url: str | None) -> None:
    url = _url(tmp_path, db_url)
    db = Database(url)
    with db.tx() as conn:  # as a catalog at version 12 had them
        for names in NEW.values():
            for name in names:
                conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(text("CREATE INDEX ix_vvols_container ON vvols (container_id)"))
        conn.execute(text("CREATE INDEX ix_bindings_pe ON bindings (pe_id)"))
        conn.execute(update(schema.schema_version).values(version=12))
    db.close()
    db = Database(url)
    assert db.version() == len(MIGRATIONS)
    with db.engine.connect() as conn:
        for table, names in NEW.items():
            have = {ix["name"] for ix in inspect(conn).get_indexes(table)}
            assert names <= have
            assert not have & {"ix_vvols_container", "ix_bindings_pe"}
    db.close()


def _plans(conn: Connection, call: Any) -> list[str]:
    """SQLite's query plan of each statement ``call()`` runs."""
    ran: list[tuple[str, Any]] = []

    def keep(_c: Any, _cur: Any, stmt: str, params: Any, _ctx: Any, _many: bool) -> None:
        if stmt.lstrip().upper().startswith("SELECT"):
            ran.append((stmt, params))

    event.listen(conn, "before_cursor_execute", keep)
    try:
        call()
    finally:
        event.remove(conn, "before_cursor_execute", keep)
    plans = []
    for stmt, params in ran:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {stmt}", params).all()
        plans.append(" | ".join(str(r[-1]) for r in rows))
    return plans


def test_sqlite_pages_and_counts_through_the_indexes(tmp_path: str) -> None:
    db = Database(sqlite_url(os.path.join(tmp_path, "c.db")))
    with db.tx() as conn:
        conn.exec_driver_sql("ANALYZE")
        after = (1.0, "x")
        (plan,) = _plans(conn, lambda: vvolrepo.listing(conn, after=after, limit=10))
        assert "ix_vvols_created" in plan and "TEMP B-TREE" not in plan, plan
        (plan,) = _plans(conn, lambda: vvolrepo.listing(conn, "c1", after=after, limit=10))
        assert "ix_vvols_container_created" in plan and "TEMP B-TREE" not in plan, plan
        (plan,) = _plans(conn, lambda: vvolrepo.listing(conn, None, "d1", after=after, limit=9))
        assert "ix_vvols_datastore" in plan and "TEMP B-TREE" not in plan, plan
        (plan,) = _plans(conn, lambda: vvolrepo.tally(conn, "d1"))
        assert "ix_vvols_datastore" in plan, plan
        (plan,) = _plans(conn, lambda: vvolrepo.provisioned_in_datastore(conn, "d1"))
        assert "ix_vvols_datastore" in plan, plan
        (plan,) = _plans(conn, lambda: bindrepo.used_secondaries(conn, "pe1", 3))
        assert "ix_bindings_pe_tid" in plan, plan
        (plan,) = _plans(conn, lambda: bindrepo.hints_for(conn, "pe1", "h1"))
        assert "ix_binding_hints_pe_host" in plan, plan
        (plan,) = _plans(conn, lambda: bindrepo.page_bindings(conn, after=("a", "b"), limit=5))
        assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan
    db.close()
