"""The Ceph clients each control-plane replica opened, for fencing at the storage.

    replica_clients(replica, array_id, addr, epoch, since)
      recorded   when a replica's librados connection to an rbd array is up, before
                 any I/O goes through it (a new connection has a new nonce: a new row)
      forgotten  when the replica shuts that connection down itself
      stale      its process is no longer the replica's live one:

         replica row gone ─┐
         state fenced ─────┼─▶ stale ─▶ blocklisted by a live replica, then deleted
         other epoch ──────┤
         since < started ──┘   (the id registered again after the row had gone)

``since`` and ``started`` are both the catalog's clock.  Works on SQLite and on
PostgreSQL (only PostgreSQL has replicas, so only there are rows recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, not_, or_, select

from . import schema
from .db import insert_ignore, is_postgres
from .replicarepo import NOW

_CLIENTS = schema.replica_clients
_REPLICAS = schema.replicas


@dataclass(frozen=True)
class Client:
    replica: str
    array_id: str
    addr: str
    epoch: int
    since: float


def _now(conn: Connection) -> float:
    """The catalog's clock (seconds since the epoch), as replicarepo uses it."""
    sql = (
        f"SELECT {NOW}" if is_postgres(conn) else "SELECT (julianday('now') - 2440587.5) * 86400.0"
    )
    return float(conn.exec_driver_sql(sql).scalar_one())


def record(conn: Connection, replica: str, epoch: int, array_id: str, addr: str) -> None:
    values = {"replica": replica, "array_id": array_id, "addr": addr}
    insert_ignore(conn, _CLIENTS, **values, epoch=epoch, since=_now(conn))


def forget(conn: Connection, replica: str, array_id: str, addr: str) -> None:
    c = _CLIENTS.c
    conn.execute(
        delete(_CLIENTS).where(c.replica == replica, c.array_id == array_id, c.addr == addr)
    )


def stale(conn: Connection, replicas: list[str] | None = None) -> list[Client]:
    """Clients whose process no longer is its replica's live one (of ``replicas``
    only, when given), oldest first."""
    c, r = _CLIENTS.c, _REPLICAS.c
    live = select(r.id).where(
        r.id == c.replica, r.state == "live", r.epoch == c.epoch, r.started <= c.since
    )
    query = select(_CLIENTS).where(not_(live.exists()))
    if replicas is not None:
        query = query.where(c.replica.in_(replicas))
    return [_client(r) for r in conn.execute(query.order_by(c.since, c.addr))]


def of(conn: Connection, replica: str) -> list[Client]:
    """Every recorded client of ``replica``."""
    c = _CLIENTS.c
    rows = conn.execute(select(_CLIENTS).where(c.replica == replica).order_by(c.since, c.addr))
    return [_client(r) for r in rows]


def _client(row: Any) -> Client:
    return Client(row.replica, row.array_id, row.addr, int(row.epoch), float(row.since))


def remove(conn: Connection, clients: list[Client]) -> None:
    """Delete the rows of ``clients`` (blocklisted, or their array is gone)."""
    if not clients:
        return
    c = _CLIENTS.c
    match = [
        and_(c.replica == x.replica, c.array_id == x.array_id, c.addr == x.addr) for x in clients
    ]
    conn.execute(delete(_CLIENTS).where(or_(*match)))
