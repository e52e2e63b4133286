"""Queries for arrays, containers and the journal.  Every function takes an
open connection so callers compose them inside one transaction."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Row, delete, func, select, update

from .. import spacemodel
from ..arrays import settings_from
from ..model import Array, Container, JournalEntry
from . import eventrepo
from .schema import arrays, container_arrays, containers, journal, vvols


def _array(row: Row[Any]) -> Array:
    return Array(
        id=row.id,
        name=row.name,
        backend=row.backend,
        settings=settings_from(row.backend, json.loads(row.settings or "{}")),
        capabilities=json.loads(row.capabilities),
        created=row.created,
        fs_id=row.fs_id,
    )


def insert_array(conn: Connection, arr: Array) -> None:
    conn.execute(
        arrays.insert().values(
            id=arr.id,
            name=arr.name,
            backend=arr.backend,
            settings=json.dumps(arr.settings.to_dict()),
            capabilities=json.dumps(arr.capabilities),
            created=arr.created,
            fs_id=arr.fs_id,
        )
    )


def set_array_fs_id(conn: Connection, array_id: str, fs_id: str) -> None:
    conn.execute(update(arrays).where(arrays.c.id == array_id).values(fs_id=fs_id))


def set_array_capabilities(conn: Connection, array_id: str, caps: dict[str, bool]) -> None:
    conn.execute(
        update(arrays).where(arrays.c.id == array_id).values(capabilities=json.dumps(caps))
    )


def get_array(conn: Connection, ref: str) -> Array | None:
    row = conn.execute(select(arrays).where((arrays.c.id == ref) | (arrays.c.name == ref))).first()
    return _array(row) if row else None


def list_arrays(conn: Connection) -> list[Array]:
    return [_array(r) for r in conn.execute(select(arrays).order_by(arrays.c.created))]


def delete_array(conn: Connection, array_id: str) -> None:
    conn.execute(delete(arrays).where(arrays.c.id == array_id))


def array_users(conn: Connection, array_id: str) -> list[str]:
    q = (
        select(containers.c.name)
        .join(container_arrays, container_arrays.c.container_id == containers.c.id)
        .where(container_arrays.c.array_id == array_id)
    )
    return [r[0] for r in conn.execute(q)]


def _container(conn: Connection, row: Row[Any], arrays: list[str] | None = None) -> Container:
    """The container of ``row``; its arrays are read unless given."""
    if arrays is None:
        q = (
            select(container_arrays.c.array_id)
            .where(container_arrays.c.container_id == row.id)
            .order_by(container_arrays.c.position)
        )
        arrays = [r[0] for r in conn.execute(q)]
    return Container(
        id=row.id,
        name=row.name,
        capacity=row.capacity,
        provisioned=row.provisioned,
        tenant=row.tenant,
        arrays=arrays,
        created=row.created,
        overcommit=float(row.overcommit if row.overcommit is not None else 1.0),
        reserve=int(row.reserve or 0),
        reserve_spec=row.reserve_spec,
        alerts=spacemodel.parse_alerts(row.alerts) if row.alerts else spacemodel.LEVELS,
    )


def insert_container(conn: Connection, c: Container) -> None:
    conn.execute(
        containers.insert().values(
            id=c.id,
            name=c.name,
            capacity=c.capacity,
            provisioned=c.provisioned,
            tenant=c.tenant,
            created=c.created,
            overcommit=c.overcommit,
            reserve=c.reserve,
            reserve_spec=c.reserve_spec,
            alerts=spacemodel.alerts_text(c.alerts),
        )
    )
    for pos, array_id in enumerate(c.arrays):
        conn.execute(
            container_arrays.insert().values(container_id=c.id, array_id=array_id, position=pos)
        )


def lock_container(conn: Connection, container_id: str) -> None:
    """Hold the container's row until the transaction ends (PostgreSQL; SQLite's
    single writer needs nothing): writers that take it first never deadlock on
    its vvols."""
    conn.execute(select(containers.c.id).where(containers.c.id == container_id).with_for_update())


def get_container(conn: Connection, ref: str) -> Container | None:
    """By id or name; one query (a round trip less on a networked catalog)."""
    q = (
        select(containers, container_arrays.c.array_id.label("member"))
        .outerjoin(container_arrays, container_arrays.c.container_id == containers.c.id)
        .where((containers.c.id == ref) | (containers.c.name == ref))
        .order_by(containers.c.id, container_arrays.c.position)
    )
    rows = conn.execute(q).all()
    if not rows:
        return None
    # an id and another container's name could both match ``ref``: the id wins
    first = next((r.id for r in rows if r.id == ref), rows[0].id)
    mine = [r for r in rows if r.id == first]
    return _container(conn, mine[0], [r.member for r in mine if r.member is not None])


def list_containers(conn: Connection) -> list[Container]:
    return [
        _container(conn, r) for r in conn.execute(select(containers).order_by(containers.c.created))
    ]


def delete_container(conn: Connection, container_id: str) -> None:
    conn.execute(delete(container_arrays).where(container_arrays.c.container_id == container_id))
    conn.execute(delete(containers).where(containers.c.id == container_id))


def reserve(conn: Connection, container_id: str, delta: int) -> bool:
    """Atomically add ``delta`` bytes to the container's provisioned total;
    returns False (and changes nothing) when that would exceed its capacity
    times its over-subscription ratio."""
    return reserve_to(conn, container_id, delta) is not None


def reserve_to(conn: Connection, container_id: str, delta: int) -> int | None:
    """As :func:`reserve`; returns the new provisioned total (None: refused)."""
    stmt = (
        update(containers)
        .where(containers.c.id == container_id)
        .values(provisioned=containers.c.provisioned + delta)
    )
    if delta > 0:
        stmt = stmt.where(
            containers.c.provisioned + delta <= containers.c.capacity * containers.c.overcommit
        )
    row = conn.execute(stmt.returning(containers.c.provisioned)).first()
    return None if row is None else int(row[0])


def adjust_provisioned(conn: Connection, container_id: str, delta: int) -> None:
    """Record a change the array reported (a snapshot's unique bytes grew): no limit."""
    conn.execute(
        update(containers)
        .where(containers.c.id == container_id)
        .values(provisioned=containers.c.provisioned + delta)
    )


def set_space_settings(
    conn: Connection,
    container_id: str,
    capacity: int,
    overcommit: float,
    reserve: int,
    reserve_spec: str | None,
    alerts: tuple[float, ...],
) -> None:
    conn.execute(
        update(containers)
        .where(containers.c.id == container_id)
        .values(
            capacity=capacity,
            overcommit=overcommit,
            reserve=reserve,
            reserve_spec=reserve_spec,
            alerts=spacemodel.alerts_text(alerts),
        )
    )


def recount_provisioned(conn: Connection, container_id: str) -> int:
    """What the container's vvols are charged (see spacemodel.py)."""
    total = conn.execute(
        select(func.coalesce(func.sum(vvols.c.charge), 0)).where(
            vvols.c.container_id == container_id
        )
    ).scalar_one()
    return int(total)


def container_vvol_count(conn: Connection, container_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(vvols).where(vvols.c.container_id == container_id)
        ).scalar_one()
    )


# -- journal ---------------------------------------------------------------------------


def journal_add(
    conn: Connection, entry: JournalEntry, owner: tuple[str, int] | None = None
) -> None:
    """Journal an operation; ``owner`` is (replica, its lease epoch) that runs it."""
    conn.execute(
        journal.insert().values(
            id=entry.id,
            op=entry.op,
            vvol_id=entry.vvol,
            step=entry.step,
            args=json.dumps(entry.args),
            created=entry.created,
            owner=owner[0] if owner else None,
            owner_epoch=owner[1] if owner else None,
        )
    )
    eventrepo.op_started(conn, entry.id, entry.vvol)


def journal_step(
    conn: Connection, op_id: str, step: str, args: dict[str, Any] | None = None
) -> None:
    values: dict[str, Any] = {"step": step}
    if args is not None:
        values["args"] = json.dumps(args)
    conn.execute(update(journal).where(journal.c.id == op_id).values(**values))


def journal_remove(
    conn: Connection, op_id: str, outcome: str = "finished", error: str | None = None
) -> None:
    """The operation is over: ``outcome`` is "finished", "rolled back" or "failed".
    This is the one place every journaled operation ends, so its event (who, how
    long, how it ended) is written here, in the same transaction."""
    eventrepo.op_ended(conn, op_id, outcome, error)
    conn.execute(delete(journal).where(journal.c.id == op_id))


def journal_list(conn: Connection) -> list[JournalEntry]:
    rows = conn.execute(select(journal).order_by(journal.c.created))
    return [
        JournalEntry(
            id=r.id,
            op=r.op,
            vvol=r.vvol_id,
            step=r.step,
            args=json.loads(r.args),
            created=r.created,
        )
        for r in rows
    ]
