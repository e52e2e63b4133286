"""Queries for space figures: per-vvol figures cached from the arrays, and the
sums a container's admission and ``container show`` read.

    vvols row:   allocated | unique_bytes | charge | held | space_at
                 (array)     (array)        (in containers.provisioned)
    containers:  capacity | overcommit | reserve | provisioned = Σ charge

``provisioned`` is kept by every admission (a conditional UPDATE, see
repo.reserve); the physical sums are read with one aggregate over the
container's index, so nothing here asks an array.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, func, select, update

from ..model import Container
from ..spacemodel import Usage
from . import repo
from .schema import vvols


@dataclass(frozen=True)
class Stale:
    """A vvol whose figures a refresh should read (oldest first)."""

    id: str
    array: str
    at: float | None


def usage(conn: Connection, c: Container) -> Usage:
    row = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(vvols.c.allocated), 0),
            func.coalesce(func.sum(vvols.c.unique_bytes), 0),
            func.coalesce(func.sum(vvols.c.held), 0),
        ).where(vvols.c.container_id == c.id)
    ).one()
    return Usage(
        capacity=c.capacity,
        overcommit=c.overcommit,
        reserve=c.reserve,
        provisioned=c.provisioned,
        allocated=int(row[1]),
        unique=int(row[2]),
        used=int(row[3]),
        vvols=int(row[0]),
    )


def used(conn: Connection, container_id: str) -> int:
    """Physical bytes the container's vvols hold (Σ held)."""
    return int(
        conn.execute(
            select(func.coalesce(func.sum(vvols.c.held), 0)).where(
                vvols.c.container_id == container_id
            )
        ).scalar_one()
    )


def record(
    conn: Connection,
    vvol_id: str,
    *,
    allocated: int,
    unique: int | None,
    charge: int,
    held: int,
    at: float | None = None,
) -> int:
    """Store a vvol's figures and move its container's ``provisioned`` by the change
    of its charge; returns that change (0 when the vvol is gone).  ``at``: when the
    figures were read; figures read earlier than the stored ones are dropped (a slow
    background refresh never overwrites a newer one).  The row stays locked until
    the transaction ends, so two writers never both move ``provisioned`` by the
    same change (PostgreSQL; SQLite has one writer anyway)."""
    row = conn.execute(
        select(vvols.c.container_id, vvols.c.charge, vvols.c.space_at)
        .where(vvols.c.id == vvol_id)
        .with_for_update()
    ).first()
    if row is None:
        return 0
    if at is not None and row.space_at is not None and row.space_at > at:
        return 0
    delta = charge - int(row.charge or 0)
    conn.execute(
        update(vvols)
        .where(vvols.c.id == vvol_id)
        .values(
            allocated=allocated,
            unique_bytes=unique,
            charge=charge,
            held=held,
            space_at=time.time() if at is None else at,
        )
    )
    if delta:
        repo.adjust_provisioned(conn, row.container_id, delta)
    return delta


def stale(conn: Connection, older_than: float, limit: int) -> list[Stale]:
    """Vvols whose figures were read before ``older_than`` (or never), oldest first."""
    q = (
        select(vvols.c.id, vvols.c.array_id, vvols.c.space_at)
        .where((vvols.c.space_at.is_(None)) | (vvols.c.space_at < older_than))
        .order_by(vvols.c.space_at.is_not(None), vvols.c.space_at)
        .limit(limit)
    )
    return [Stale(r.id, r.array_id, r.space_at) for r in conn.execute(q)]


def touch(conn: Connection, ids: list[str], at: float) -> None:
    """Mark figures as looked at (a vvol whose array could not answer goes to the
    back of the refresh queue instead of blocking it)."""
    if ids:
        conn.execute(update(vvols).where(vvols.c.id.in_(ids)).values(space_at=at))


def family(conn: Connection, vvol_id: str) -> list[str]:
    """The vvol, its parent and its direct dependants: whose unique bytes change
    when it is made, written over, reverted or removed."""
    row = conn.execute(select(vvols.c.parent_id).where(vvols.c.id == vvol_id)).first()
    ids = [vvol_id]
    if row is not None and row.parent_id:
        parent = row.parent_id
        ids.append(parent)
        ids += [r[0] for r in conn.execute(select(vvols.c.id).where(vvols.c.parent_id == parent))]
    ids += [r[0] for r in conn.execute(select(vvols.c.id).where(vvols.c.parent_id == vvol_id))]
    return list(dict.fromkeys(ids))
