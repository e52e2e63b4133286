"""Engine, transactions and schema migrations.

SQLite runs in WAL mode and every transaction starts with ``BEGIN IMMEDIATE``
so concurrent writers queue on the database lock instead of failing on a
read-to-write upgrade.  Migrations are numbered; ``schema_version`` holds the
highest one applied, and each runs in its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text

from . import eventschema, schema

Migration = Callable[[Connection], None]


def _v1(conn: Connection) -> None:
    # Version 1 creates its tables from the current definitions; later migrations
    # therefore add columns only where they are missing (see _add_column).
    schema.metadata.create_all(
        conn,
        tables=[
            schema.arrays,
            schema.containers,
            schema.container_arrays,
            schema.vvols,
            schema.journal,
        ],
    )


def _v2(conn: Connection) -> None:
    schema.metadata.create_all(
        conn, tables=[schema.hosts, schema.pes, schema.pe_targets, schema.bindings]
    )


def _add_column(conn: Connection, table: str, column: str, ddl: str) -> None:
    """ALTER TABLE ... ADD COLUMN unless a newer schema already made the column."""
    if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))


def _v3(conn: Connection) -> None:
    _add_column(conn, "vvols", "datastore_id", "VARCHAR(64)")
    _add_column(conn, "vvols", "tenant", "VARCHAR(128)")
    _add_column(conn, "hosts", "tenant", "VARCHAR(128)")
    schema.metadata.create_all(
        conn,
        tables=[
            schema.tenants,
            schema.tokens,
            schema.datastores,
            schema.datastore_containers,
            schema.sequences,
        ],
    )


def _v4(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.binding_hints])


def _v5_arrays(conn: Connection) -> None:
    _add_column(conn, "arrays", "fs_id", "TEXT")
    _add_column(conn, "vvols", "failure", "TEXT")


def _v6_tenancy(conn: Connection) -> None:
    _add_column(conn, "tokens", "last_used", "FLOAT")
    schema.metadata.create_all(conn, tables=[schema.op_owners], checkfirst=True)


def _v7_vm_leases(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.vm_leases], checkfirst=True)


def _v8_array_settings(conn: Connection) -> None:
    """Arrays keep a per-backend settings record (JSON) instead of a path that
    only ``dir`` filled; vvols keep where their array put them (``locator``)."""
    _add_column(conn, "arrays", "settings", "TEXT")
    _add_column(conn, "vvols", "locator", "TEXT")
    columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(arrays)")}
    if "path" in columns:
        conn.exec_driver_sql(
            "UPDATE arrays SET settings = json_object('path', path) WHERE settings IS NULL"
        )
        conn.exec_driver_sql("ALTER TABLE arrays DROP COLUMN path")


def _v9_events(conn: Connection) -> None:
    """The event log, its running counts, operation statistics and the
    reconciler's findings (eventschema.py); journal entries keep their tenant."""
    _add_column(conn, "journal", "tenant", "VARCHAR(128)")
    schema.metadata.create_all(conn, tables=eventschema.TABLES, checkfirst=True)


def _v10_space(conn: Connection) -> None:
    """Thin provisioning: containers get an over-subscription ratio and a reserve;
    vvols cache their space figures and what they are charged.  Every existing
    vvol keeps being charged its size (what ``provisioned`` counted) until the
    first refresh reads its figures."""
    _add_column(conn, "containers", "overcommit", "FLOAT NOT NULL DEFAULT 1.0")
    _add_column(conn, "containers", "reserve", "BIGINT NOT NULL DEFAULT 0")
    _add_column(conn, "containers", "reserve_spec", "VARCHAR(32)")
    _add_column(conn, "containers", "alerts", "VARCHAR(32)")
    _add_column(conn, "vvols", "allocated", "BIGINT NOT NULL DEFAULT 0")
    _add_column(conn, "vvols", "unique_bytes", "BIGINT")
    _add_column(conn, "vvols", "charge", "BIGINT NOT NULL DEFAULT 0")
    _add_column(conn, "vvols", "held", "BIGINT NOT NULL DEFAULT 0")
    _add_column(conn, "vvols", "space_at", "FLOAT")
    conn.exec_driver_sql("UPDATE vvols SET charge = size WHERE space_at IS NULL")


def _v11_fencing(conn: Connection) -> None:
    """Hosts can be fenced: cut off from every endpoint and from the API."""
    _add_column(conn, "hosts", "fenced", "FLOAT")


MIGRATIONS: list[Migration] = [
    _v1,
    _v2,
    _v3,
    _v4,
    _v5_arrays,
    _v6_tenancy,
    _v7_vm_leases,
    _v8_array_settings,
    _v9_events,
    _v10_space,
    _v11_fencing,
]


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self.migrate()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def version(self) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.schema_version.c.version)).first()
        return int(row[0]) if row else 0

    def migrate(self) -> int:
        schema.schema_version.create(self.engine, checkfirst=True)
        with self.tx() as conn:
            if conn.execute(select(schema.schema_version.c.version)).first() is None:
                conn.execute(schema.schema_version.insert().values(version=0))
        current = self.version()
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number <= current:
                continue
            with self.tx() as conn:
                migration(conn)
                conn.execute(schema.schema_version.update().values(version=number))
        return self.version()

    def close(self) -> None:
        self.engine.dispose()


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let BEGIN below control transactions
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return engine
