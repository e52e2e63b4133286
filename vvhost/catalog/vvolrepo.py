"""Queries for vvols."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, select, tuple_, update

from ..errors import StaleGeneration
from ..model import DEFERRED, Vvol
from .schema import vvols

_COLUMN = {
    "container": "container_id",
    "array": "array_id",
    "parent": "parent_id",
    "op": "op_id",
    "datastore": "datastore_id",
    "unique": "unique_bytes",
}


def _vvol(row: Row[Any]) -> Vvol:
    return Vvol(
        id=row.id,
        name=row.name,
        type=row.type,
        container=row.container_id,
        array=row.array_id,
        size=row.size,
        parent=row.parent_id,
        relation=row.relation,
        readonly=bool(row.readonly),
        state=row.state,
        op=row.op_id,
        generation=row.generation,
        refs=row.refs,
        created=row.created,
        metadata=json.loads(row.metadata),
        datastore=row.datastore_id,
        tenant=row.tenant,
        failure=row.failure,
        locator=json.loads(row.locator) if row.locator else None,
        allocated=row.allocated or 0,
        unique=row.unique_bytes,
        charge=row.charge or 0,
        held=row.held or 0,
    )


def _columns(values: dict[str, Any]) -> dict[str, Any]:
    out = {_COLUMN.get(k, k): v for k, v in values.items()}
    if "metadata" in out:
        out["metadata"] = json.dumps(out["metadata"], sort_keys=True)
    if out.get("locator") is not None:
        out["locator"] = json.dumps(out["locator"], sort_keys=True)
    return out


def insert(conn: Connection, v: Vvol) -> None:
    conn.execute(vvols.insert().values(**_columns(asdict(v))))


_GET = select(vvols).where(vvols.c.id == bindparam("k_id"))  # built once: hot path


def get(conn: Connection, vvol_id: str) -> Vvol | None:
    row = conn.execute(_GET, {"k_id": vvol_id}).first()
    return _vvol(row) if row else None


def by_name(conn: Connection, name: str) -> list[Vvol]:
    """Vvols named ``name`` (a vvol deleted with ``--deferred`` answers to its id only)."""
    q = select(vvols).where(vvols.c.name == name).where(vvols.c.state != DEFERRED)
    return [_vvol(r) for r in conn.execute(q)]


def listing(
    conn: Connection,
    container_id: str | None = None,
    datastore_id: str | None = None,
    tenant: str | None = None,
    deferred: bool = False,
    *,
    after: tuple[float, str] | None = None,
    limit: int | None = None,
) -> list[Vvol]:
    """Vvols, oldest first; those deleted with ``--deferred`` only when asked.
    A page: at most ``limit`` of them, those after the key (created, id) ``after``
    (the indexes of migration ``_v14_scale_indexes`` serve this order)."""
    q = select(vvols).order_by(vvols.c.created, vvols.c.id)
    if after is not None:
        q = q.where(tuple_(vvols.c.created, vvols.c.id) > tuple_(*after))
    if limit is not None:
        q = q.limit(limit)
    if not deferred:
        q = q.where(vvols.c.state != DEFERRED)
    if container_id:
        q = q.where(vvols.c.container_id == container_id)
    if datastore_id:
        q = q.where(vvols.c.datastore_id == datastore_id)
    if tenant:
        q = q.where(vvols.c.tenant == tenant)
    return [_vvol(r) for r in conn.execute(q)]


def dependants(conn: Connection, vvol_id: str) -> list[Vvol]:
    q = select(vvols).where(vvols.c.parent_id == vvol_id).order_by(vvols.c.created, vvols.c.id)
    return [_vvol(r) for r in conn.execute(q)]


def count_dependants(conn: Connection, vvol_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(vvols).where(vvols.c.parent_id == vvol_id)
        ).scalar_one()
    )


def change(conn: Connection, v: Vvol, *, bump: bool = True, **values: Any) -> None:
    """Update ``v`` if nobody changed it since it was read (optimistic generation)."""
    cols = _columns(values)
    if bump:
        cols["generation"] = v.generation + 1
    res = conn.execute(
        update(vvols)
        .where(vvols.c.id == v.id)
        .where(vvols.c.generation == v.generation)
        .values(**cols)
    )
    if res.rowcount != 1:
        current = get(conn, v.id)
        raise StaleGeneration(
            ref=v.id, expected=v.generation, actual=current.generation if current else "deleted"
        )


def force(conn: Connection, vvol_id: str, **values: Any) -> None:
    """Unconditional update (recovery only)."""
    conn.execute(update(vvols).where(vvols.c.id == vvol_id).values(**_columns(values)))


def add_ref(conn: Connection, vvol_id: str | None, delta: int) -> None:
    if vvol_id:
        conn.execute(update(vvols).where(vvols.c.id == vvol_id).values(refs=vvols.c.refs + delta))


def remove(conn: Connection, vvol_id: str) -> None:
    conn.execute(delete(vvols).where(vvols.c.id == vvol_id))


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(vvols)).scalar_one())


def provisioned_in_datastore(conn: Connection, datastore_id: str) -> int:
    """What the datastore's vvols are charged (snapshots: their unique bytes)."""
    return int(
        conn.execute(
            select(func.coalesce(func.sum(vvols.c.charge), 0)).where(
                vvols.c.datastore_id == datastore_id
            )
        ).scalar_one()
    )


def tally(conn: Connection, datastore_id: str, tenant: str | None = None) -> tuple[int, int]:
    """(how many, their total size) of the datastore's vvols, those deleted with
    ``--deferred`` left out; only ``tenant``'s when given.  Counted by the database."""
    q = select(func.count(), func.coalesce(func.sum(vvols.c.size), 0)).where(
        vvols.c.datastore_id == datastore_id, vvols.c.state != DEFERRED
    )
    if tenant is not None:
        q = q.where(vvols.c.tenant == tenant)
    count, size = conn.execute(q).one()
    return int(count), int(size)
