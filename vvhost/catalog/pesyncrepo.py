"""Queries for cross-node endpoint changes (PostgreSQL: several replicas).

pe_sync(pe_id, wanted, applied, error, state_dir)
  request   wanted + 1 (RETURNING it), and NOTIFY the endpoint node's channel;
            PostgreSQL delivers the notification when the transaction commits
  ack       the owner, after making the daemon present the catalog as it was
            when it read ``wanted``: applied = max(applied, that wanted)
  seen      the requester polls until applied >= its generation
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select, text, update
from sqlalchemy.dialects import postgresql

from .schema import pe_sync

CHANNEL_PREFIX = "vvhost_node_"


@dataclass(frozen=True)
class SyncState:
    wanted: int
    applied: int
    error: str | None
    state_dir: str | None


def channel(node: str) -> str:
    """The NOTIFY channel of ``node``'s replicas (any text: pg_notify takes a string)."""
    return CHANNEL_PREFIX + node


def request(conn: Connection, pe_id: str, node: str) -> int:
    """Ask ``node``'s replicas to make endpoint ``pe_id`` present the catalog;
    returns the generation to wait for."""
    stmt = postgresql.insert(pe_sync).values(pe_id=pe_id, wanted=1, applied=0)
    upsert = stmt.on_conflict_do_update(
        index_elements=[pe_sync.c.pe_id], set_={"wanted": pe_sync.c.wanted + 1}
    ).returning(pe_sync.c.wanted)
    wanted = int(conn.execute(upsert).scalar_one())
    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel(node), "p": pe_id})
    return wanted


def pending(conn: Connection, pe_ids: list[str]) -> dict[str, int]:
    """pe id -> wanted, for those of ``pe_ids`` with a request not yet applied."""
    if not pe_ids:
        return {}
    rows = conn.execute(
        select(pe_sync.c.pe_id, pe_sync.c.wanted).where(
            pe_sync.c.pe_id.in_(pe_ids), pe_sync.c.wanted > pe_sync.c.applied
        )
    )
    return {str(r.pe_id): int(r.wanted) for r in rows}


def wanted(conn: Connection, pe_id: str) -> int:
    got = conn.execute(select(pe_sync.c.wanted).where(pe_sync.c.pe_id == pe_id)).scalar()
    return int(got or 0)


def ack(conn: Connection, pe_id: str, generation: int, error: str | None, state_dir: str) -> None:
    """The owner applied everything up to ``generation`` (``error``: it could not)."""
    stmt = postgresql.insert(pe_sync).values(
        pe_id=pe_id, wanted=generation, applied=generation, error=error, state_dir=state_dir
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[pe_sync.c.pe_id],
            set_={"error": error, "state_dir": state_dir},
        )
    )
    conn.execute(
        update(pe_sync)
        .where(pe_sync.c.pe_id == pe_id, pe_sync.c.applied < generation)
        .values(applied=generation)
    )


def state(conn: Connection, pe_id: str) -> SyncState | None:
    row = conn.execute(select(pe_sync).where(pe_sync.c.pe_id == pe_id)).first()
    if row is None:
        return None
    return SyncState(int(row.wanted), int(row.applied), row.error, row.state_dir)


def forget(conn: Connection, pe_id: str) -> None:
    conn.execute(pe_sync.delete().where(pe_sync.c.pe_id == pe_id))


def announce(conn: Connection, pe_id: str, state_dir: str) -> None:
    """The owner of ``pe_id`` keeps it under ``state_dir`` (for handles made elsewhere)."""
    stmt = postgresql.insert(pe_sync).values(pe_id=pe_id, wanted=0, applied=0, state_dir=state_dir)
    conn.execute(
        stmt.on_conflict_do_update(index_elements=[pe_sync.c.pe_id], set_={"state_dir": state_dir})
    )
