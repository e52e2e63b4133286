"""Engine, transactions and schema migrations, on SQLite and on PostgreSQL.

SQLite runs in WAL mode and every transaction starts with ``BEGIN IMMEDIATE``
so concurrent writers queue on the database lock instead of failing on a
read-to-write upgrade.  PostgreSQL (``postgresql+psycopg://...``) runs at READ
COMMITTED with many writers at once: allocators there take row locks
(``SELECT ... FOR UPDATE``, which SQLite leaves out) or atomic updates
(``UPDATE ... RETURNING``), and "insert unless there" is :func:`insert_ignore`.

Migrations are numbered; ``schema_version`` holds the highest one applied.  On
SQLite each runs in its own transaction; on PostgreSQL (transactional DDL) all
pending ones run in one transaction under an advisory lock, so control planes
starting together migrate once.  Every dialect difference lives in this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    RootTransaction,
    Table,
    create_engine,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from ..errors import CatalogUnreachable, Conflict, InvalidInput
from . import chaprepo, eventschema, schema

Migration = Callable[[Connection], None]

_RETRYABLE = {"40P01", "40001"}  # deadlock_detected, serialization_failure

# pg_advisory_xact_lock key that serialises migrations ("vvhost" in ASCII).
_MIGRATE_LOCK = 0x767668_6F7374


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def serialize(conn: Connection, name: str) -> None:
    """Let one transaction at a time past this point for ``name`` (until it ends):
    a transaction-scoped advisory lock on PostgreSQL; SQLite's BEGIN IMMEDIATE
    already lets one writer at a time in."""
    if is_postgres(conn):
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def insert_ignore(conn: Connection, table: Table, **values: Any) -> bool:
    """INSERT ``values`` unless a row with the same key (or another unique value)
    is there; True when this call inserted it.  Race-free on both databases."""
    dialect = postgresql if is_postgres(conn) else sqlite
    stmt = dialect.insert(table).values(**values).on_conflict_do_nothing()
    # RETURNING says whether a row went in: psycopg's rowcount for this statement
    # is -1 whether it inserted or not
    key = list(table.primary_key.columns) or list(table.columns)
    return conn.execute(stmt.returning(key[0])).first() is not None


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
    columns = {c["name"] for c in inspect(conn).get_columns("arrays")}
    if "path" in columns:  # only catalogs made before version 8 have it
        rows = conn.execute(text("SELECT id, path FROM arrays WHERE settings IS NULL")).all()
        for array_id, path in rows:
            conn.execute(
                update(schema.arrays)
                .where(schema.arrays.c.id == array_id)
                .values(settings=json.dumps({"path": path}))
            )
        conn.execute(text("ALTER TABLE arrays DROP COLUMN path"))  # SQLite >= 3.35


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
    vv = schema.vvols
    conn.execute(update(vv).where(vv.c.space_at.is_(None)).values(charge=vv.c.size))


def _v11_unique_targets(conn: Connection) -> None:
    """Two targets of one endpoint never share a tid (a safety net under the
    allocator's lock on the endpoint row, for many writers on PostgreSQL)."""
    for index in schema.pe_targets.indexes:
        index.create(conn, checkfirst=True)


def _v12_fencing(conn: Connection) -> None:
    """Hosts can be fenced: cut off from every endpoint and from the API."""
    _add_column(conn, "hosts", "fenced", "FLOAT")


def _v13_replicas(conn: Connection) -> None:
    """Several control planes share one catalog: each registers as a replica with
    a lease; journaled operations and bindings being changed name their replica."""
    _add_column(conn, "journal", "owner", "VARCHAR(64)")
    _add_column(conn, "journal", "owner_epoch", "BIGINT")
    _add_column(conn, "bindings", "owner", "VARCHAR(64)")
    _add_column(conn, "pes", "node", "VARCHAR(128)")
    schema.metadata.create_all(conn, tables=[schema.replicas], checkfirst=True)


# Indexes made by _v14_scale_indexes, and the ones they replace (a prefix of theirs).
_SCALE_INDEXES = {
    schema.vvols: (
        "ix_vvols_created",
        "ix_vvols_container_created",
        "ix_vvols_datastore",
        "ix_vvols_tenant",
    ),
    schema.bindings: ("ix_bindings_pe_tid",),
    schema.binding_hints: ("ix_binding_hints_pe_host",),
}
_REPLACED_INDEXES = ("ix_vvols_container", "ix_bindings_pe")


def _v14_scale_indexes(conn: Connection) -> None:
    """Indexes for a big catalog: vvol listings page in (created, id) order with
    or without a container, datastore or tenant filter (and a datastore's totals
    read only its vvols); an iSCSI target's LUNs and a host's LUN hints are read
    without scanning every binding of the endpoint."""
    for table, names in _SCALE_INDEXES.items():
        for index in table.indexes:
            if index.name in names:
                index.create(conn, checkfirst=True)
    for name in _REPLACED_INDEXES:
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))


def _v15_pe_sync(conn: Connection) -> None:
    """Replicas on other nodes ask an endpoint's node to apply binding changes."""
    schema.metadata.create_all(conn, tables=[schema.pe_sync], checkfirst=True)


def _v16_iscsi_chap(conn: Connection) -> None:
    """Each host gets its own CHAP account for iSCSI targets (chaprepo.py);
    hosts that exist already get theirs here."""
    schema.metadata.create_all(conn, tables=[schema.iscsi_chap], checkfirst=True)
    have = {r.host for r in conn.execute(select(schema.iscsi_chap.c.host))}
    for row in conn.execute(select(schema.hosts.c.name)).all():
        if row.name not in have:
            user, secret = chaprepo.new_account(row.name)
            values = {"host": row.name, "username": user, "secret": secret}
            conn.execute(schema.iscsi_chap.insert().values(**values))


def _v17_replica_clients(conn: Connection) -> None:
    """Each replica records the Ceph clients it opens for rbd arrays, so the
    replica that takes over from it can blocklist them (clientrepo.py)."""
    schema.metadata.create_all(conn, tables=[schema.replica_clients], checkfirst=True)


def _v18_replica_epochs(conn: Connection) -> None:
    """Epochs come from one sequence (PostgreSQL): a replica id registered again
    after its row went never gets an epoch an earlier, frozen process still holds."""
    if not is_postgres(conn):
        return
    conn.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {schema.EPOCH_SEQUENCE}"))
    conn.execute(
        text(
            f"SELECT setval('{schema.EPOCH_SEQUENCE}', "
            "greatest((SELECT max(epoch) FROM replicas), 1))"
        )
    )


def _v19_nbd_tls(conn: Connection) -> None:
    """The NBD-over-TLS CA, hosts' client credentials and their daemons' ports live
    in the catalog, so every node issues, checks and hands out the same ones (a
    node's files from before are taken over when it first needs the CA)."""
    tables = [schema.nbd_ca, schema.nbd_creds, schema.nbd_ports]
    schema.metadata.create_all(conn, tables=tables, checkfirst=True)


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
    _v11_unique_targets,
    _v12_fencing,
    _v13_replicas,
    _v14_scale_indexes,
    _v15_pe_sync,
    _v16_iscsi_chap,
    _v17_replica_clients,
    _v18_replica_epochs,
    _v19_nbd_tls,
]


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


def catalog_url(url: str) -> str:
    """``url`` checked: SQLite, or PostgreSQL through psycopg 3 (``postgresql://``
    and ``postgres://`` mean ``postgresql+psycopg://``)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInput(detail=f"not a database URL: {url!r}") from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if parsed.drivername == "sqlite":
        return url
    raise InvalidInput(
        detail=f"catalog URL {safe_url(url)}: use sqlite:///FILE or postgresql://USER@HOST/DB"
    )


def safe_url(url: str) -> str:
    """``url`` with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"


# Called at the start of every transaction (PostgreSQL with replicas: the lease check).
Guard = Callable[[Connection], None]


class Database:
    def __init__(self, url: str, application_name: str | None = None) -> None:
        self.url = catalog_url(url)
        self.guard: Guard | None = None
        try:
            self.engine = _make_engine(self.url, application_name)
            self.migrate()
        except (OperationalError, InterfaceError) as exc:
            if hasattr(self, "engine"):
                self.engine.dispose()
            detail = str(exc.orig or exc).strip().splitlines()[0]
            raise CatalogUnreachable(url=safe_url(self.url), detail=detail) from None

    def _begin(self) -> tuple[Connection, RootTransaction]:
        """A connection in a new transaction that passed the guard.  A pooled
        connection PostgreSQL ended meanwhile (a replica taking over ends a frozen
        one's sessions) is thrown away and another taken, once."""
        for attempt in range(2):
            conn = self.engine.connect()
            try:
                trans = conn.begin()
                if self.guard is not None:
                    self.guard(conn)
                return conn, trans
            except DBAPIError as exc:
                conn.close()
                if attempt or not exc.connection_invalidated:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        try:
            conn, trans = self._begin()
            try:
                yield conn
            except BaseException:
                trans.rollback()
                raise
            else:
                trans.commit()
            finally:
                conn.close()
        except DBAPIError as exc:
            # PostgreSQL ends one of two transactions that wait on each other
            # (deadlock) or that cannot be serialized: the caller may try again.
            if getattr(exc.orig, "sqlstate", None) in _RETRYABLE:
                raise Conflict(
                    detail="the catalog ended this change because another one ran at the "
                    "same time; try again"
                ) from None
            raise

    def version(self) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.schema_version.c.version)).first()
        return int(row[0]) if row else 0

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def migrate(self) -> int:
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK})
                schema.schema_version.create(conn, checkfirst=True)
                _apply(conn)
            return self.version()
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


def _apply(conn: Connection) -> None:
    """Run the pending migrations inside ``conn``'s transaction (PostgreSQL)."""
    row = conn.execute(select(schema.schema_version.c.version)).first()
    if row is None:
        conn.execute(schema.schema_version.insert().values(version=0))
    current = int(row[0]) if row else 0
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number > current:
            migration(conn)
            conn.execute(schema.schema_version.update().values(version=number))


def _refuse_nul(
    _conn: Connection, _cursor: Any, _stmt: str, params: Any, _ctx: Any, _many: bool
) -> None:
    """PostgreSQL text cannot hold NUL; SQLite can.  A NUL in a value (a name or
    reference from a request) is bad input on PostgreSQL, never a database error."""
    for group in params if isinstance(params, (list, tuple)) else [params]:
        values = group.values() if isinstance(group, dict) else group or ()
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise InvalidInput(detail="text with a NUL character cannot be stored or looked up")


def _make_engine(url: str, application_name: str | None = None) -> Engine:
    if not url.startswith("sqlite"):
        # A thread per request in serve: room for the API's worker threads plus
        # the background ones, each holding at most one connection at a time.
        # No pre-ping (a round trip per transaction): a dropped connection fails
        # one transaction, and SQLAlchemy then replaces every pooled connection.
        # ``application_name`` names the replica in pg_stat_activity, so the replica
        # that takes over from a frozen one can end its sessions (and their locks).
        args = {"application_name": application_name} if application_name else {}
        engine = create_engine(url, pool_size=10, max_overflow=30, connect_args=args)
        event.listen(engine, "before_cursor_execute", _refuse_nul)
        return engine
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
