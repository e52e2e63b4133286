"""Queries for tenants, tokens, operation owners, datastores and sequences."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, delete, func, select, update

from ..model import Datastore
from .db import insert_ignore
from .schema import (
    containers,
    datastore_containers,
    datastores,
    hosts,
    op_owners,
    sequences,
    tenants,
    tokens,
    vvols,
)


# -- tenants -----------------------------------------------------------------------------
def insert_tenant(conn: Connection, name: str, created: float) -> None:
    conn.execute(tenants.insert().values(name=name, created=created))


def get_tenant(conn: Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute(select(tenants).where(tenants.c.name == name)).first()
    return {"name": row.name, "created": row.created} if row else None


def list_tenants(conn: Connection) -> list[dict[str, Any]]:
    return [
        {"name": r.name, "created": r.created}
        for r in conn.execute(select(tenants).order_by(tenants.c.name))
    ]


def tenant_users(conn: Connection, name: str) -> dict[str, list[str]]:
    """What still names tenant ``name``, by kind (names, or ids of unnamed vvols)."""
    found = {
        "hosts": [r[0] for r in conn.execute(select(hosts.c.name).where(hosts.c.tenant == name))],
        "containers": [
            r[0] for r in conn.execute(select(containers.c.name).where(containers.c.tenant == name))
        ],
        "datastores": [
            r[0] for r in conn.execute(select(datastores.c.name).where(datastores.c.tenant == name))
        ],
        "vvols": [
            r.name or r.id
            for r in conn.execute(select(vvols.c.id, vvols.c.name).where(vvols.c.tenant == name))
        ],
    }
    return {kind: sorted(names) for kind, names in found.items() if names}


def delete_tenant(conn: Connection, name: str) -> None:
    conn.execute(delete(tenants).where(tenants.c.name == name))


# -- tokens ------------------------------------------------------------------------------
def insert_token(conn: Connection, digest: str, kind: str, subject: str, created: float) -> None:
    conn.execute(tokens.insert().values(digest=digest, kind=kind, subject=subject, created=created))


def token(conn: Connection, digest: str) -> tuple[str, str] | None:
    row = conn.execute(select(tokens).where(tokens.c.digest == digest)).first()
    return (row.kind, row.subject) if row else None


def list_tokens(conn: Connection, kind: str) -> list[dict[str, Any]]:
    q = select(tokens).where(tokens.c.kind == kind).order_by(tokens.c.subject)
    return [
        {"name": r.subject, "created": r.created, "last_used": r.last_used} for r in conn.execute(q)
    ]


def touch_token(conn: Connection, digest: str, now: float, every: float) -> None:
    """Record a token's use, at most once per ``every`` seconds (a write per request
    would serialise every reader on the catalog's write lock)."""
    conn.execute(
        update(tokens)
        .where(tokens.c.digest == digest)
        .where((tokens.c.last_used.is_(None)) | (tokens.c.last_used < now - every))
        .values(last_used=now)
    )


def token_last_used(conn: Connection, digest: str) -> float | None:
    row = conn.execute(select(tokens.c.last_used).where(tokens.c.digest == digest)).first()
    return row[0] if row else None


def last_used_by(conn: Connection, kind: str) -> dict[str, float | None]:
    """subject -> the latest use of any of its tokens (None: never used)."""
    q = select(tokens.c.subject, func.max(tokens.c.last_used)).where(tokens.c.kind == kind)
    return {r[0]: r[1] for r in conn.execute(q.group_by(tokens.c.subject))}


def delete_tokens(conn: Connection, kind: str, subject: str) -> None:
    conn.execute(delete(tokens).where(tokens.c.kind == kind).where(tokens.c.subject == subject))


# -- operation owners -------------------------------------------------------------------
def claim_op(conn: Connection, op_id: str, kind: str, subject: str, now: float) -> bool:
    """Record who started ``op_id``; False if the id was used before."""
    if conn.execute(select(op_owners.c.op_id).where(op_owners.c.op_id == op_id)).first():
        return False
    conn.execute(op_owners.insert().values(op_id=op_id, kind=kind, subject=subject, created=now))
    return True


def op_owner(conn: Connection, op_id: str) -> tuple[str, str] | None:
    row = conn.execute(select(op_owners).where(op_owners.c.op_id == op_id)).first()
    return (row.kind, row.subject) if row else None


def prune_op_owners(conn: Connection, before: float) -> None:
    conn.execute(delete(op_owners).where(op_owners.c.created < before))


# -- datastores --------------------------------------------------------------------------
def _datastore(conn: Connection, row: Row[Any]) -> Datastore:
    q = (
        select(datastore_containers.c.container_id)
        .where(datastore_containers.c.datastore_id == row.id)
        .order_by(datastore_containers.c.position)
    )
    return Datastore(
        id=row.id,
        name=row.name,
        capacity=row.capacity,
        tenant=row.tenant,
        containers=[r[0] for r in conn.execute(q)],
        created=row.created,
    )


def insert_datastore(conn: Connection, ds: Datastore) -> None:
    conn.execute(
        datastores.insert().values(
            id=ds.id, name=ds.name, capacity=ds.capacity, tenant=ds.tenant, created=ds.created
        )
    )
    set_datastore_containers(conn, ds.id, ds.containers)


def set_datastore_containers(conn: Connection, ds_id: str, containers: list[str]) -> None:
    conn.execute(delete(datastore_containers).where(datastore_containers.c.datastore_id == ds_id))
    for pos, cid in enumerate(containers):
        conn.execute(
            datastore_containers.insert().values(datastore_id=ds_id, container_id=cid, position=pos)
        )


def get_datastore(conn: Connection, ref: str) -> Datastore | None:
    row = conn.execute(
        select(datastores).where((datastores.c.id == ref) | (datastores.c.name == ref))
    ).first()
    return _datastore(conn, row) if row else None


def list_datastores(conn: Connection, tenant: str | None = None) -> list[Datastore]:
    q = select(datastores).order_by(datastores.c.created)
    if tenant:
        q = q.where(datastores.c.tenant == tenant)
    return [_datastore(conn, r) for r in conn.execute(q)]


def datastores_using(conn: Connection, container_id: str) -> list[str]:
    """Names of the datastores that map container ``container_id``."""
    q = (
        select(datastores.c.name)
        .join(datastore_containers, datastore_containers.c.datastore_id == datastores.c.id)
        .where(datastore_containers.c.container_id == container_id)
        .order_by(datastores.c.name)
    )
    return [r[0] for r in conn.execute(q)]


def update_datastore(conn: Connection, ds_id: str, **values: Any) -> None:
    conn.execute(update(datastores).where(datastores.c.id == ds_id).values(**values))


def delete_datastore(conn: Connection, ds_id: str) -> None:
    conn.execute(delete(datastore_containers).where(datastore_containers.c.datastore_id == ds_id))
    conn.execute(delete(datastores).where(datastores.c.id == ds_id))


# -- sequences ---------------------------------------------------------------------------
def next_value(conn: Connection, name: str) -> int:
    """The next value of counter ``name`` (starts at 1).  One atomic UPDATE ...
    RETURNING, so concurrent writers (PostgreSQL) never get the same value."""
    bump = (
        update(sequences)
        .where(sequences.c.name == name)
        .values(value=sequences.c.value + 1)
        .returning(sequences.c.value)
    )
    while True:
        row = conn.execute(bump).first()
        if row is not None:
            return int(row[0])
        if insert_ignore(conn, sequences, name=name, value=1):
            return 1
        # another writer made the counter between the two statements: bump it


def get_or_init(conn: Connection, name: str, value: int) -> int:
    """Counter ``name``'s value, set to ``value`` the first time (the first writer wins)."""
    insert_ignore(conn, sequences, name=name, value=value)
    return int(conn.execute(select(sequences.c.value).where(sequences.c.name == name)).scalar_one())
