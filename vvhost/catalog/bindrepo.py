"""Queries for hosts, protocol endpoints and bindings."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, select, tuple_, update

from ..model import ACTIVE, Binding, Host, Pe
from .schema import binding_hints, bindings, hosts, nbd_ports, pe_targets, pes

_BCOL = {"vvol": "vvol_id", "pe": "pe_id", "op": "op_id"}


# -- hosts -------------------------------------------------------------------------------
def insert_host(conn: Connection, h: Host) -> None:
    conn.execute(hosts.insert().values(**asdict(h)))


# Statements on the bind/unbind path are built once and take bound parameters.
_HOST = select(hosts).where(hosts.c.name == bindparam("k_name"))
_PE = select(pes).where((pes.c.id == bindparam("k_ref")) | (pes.c.name == bindparam("k_ref")))
_KEY = (
    (bindings.c.vvol_id == bindparam("k_vvol"))
    & (bindings.c.host == bindparam("k_host"))
    & (bindings.c.pe_id == bindparam("k_pe"))
)
_UPDATE = update(bindings).where(_KEY)
_DELETE = delete(bindings).where(_KEY)
_OF_VVOL_HOST = (
    select(bindings)
    .where(bindings.c.vvol_id == bindparam("k_vvol"))
    .where(bindings.c.host == bindparam("k_host"))
    .order_by(bindings.c.created)
)


def _host(r: Row[Any]) -> Host:
    return Host(name=r.name, iqn=r.iqn, created=r.created, tenant=r.tenant, fenced=r.fenced)


def get_host(conn: Connection, name: str) -> Host | None:
    row = conn.execute(_HOST, {"k_name": name}).first()
    return _host(row) if row else None


def list_hosts(conn: Connection) -> list[Host]:
    return [_host(r) for r in conn.execute(select(hosts).order_by(hosts.c.name))]


def set_fenced(conn: Connection, name: str, when: float | None) -> None:
    conn.execute(update(hosts).where(hosts.c.name == name).values(fenced=when))


def delete_host(conn: Connection, name: str) -> None:
    conn.execute(delete(hosts).where(hosts.c.name == name))


# -- protocol endpoints ------------------------------------------------------------------
def _pe(row: Row[Any]) -> Pe:
    return Pe(
        id=row.id,
        name=row.name,
        protocol=row.protocol,
        array=row.array_id,
        portal=row.portal,
        path=row.path,
        config=json.loads(row.config),
        created=row.created,
        node=row.node,
    )


def insert_pe(conn: Connection, pe: Pe) -> None:
    conn.execute(
        pes.insert().values(
            id=pe.id,
            name=pe.name,
            protocol=pe.protocol,
            array_id=pe.array,
            portal=pe.portal,
            path=pe.path,
            config=json.dumps(pe.config),
            created=pe.created,
            node=pe.node,
        )
    )


def get_pe(conn: Connection, ref: str) -> Pe | None:
    row = conn.execute(_PE, {"k_ref": ref}).first()
    return _pe(row) if row else None


def list_pes(conn: Connection) -> list[Pe]:
    return [_pe(r) for r in conn.execute(select(pes).order_by(pes.c.created))]


def delete_pe(conn: Connection, pe_id: str) -> None:
    conn.execute(delete(pe_targets).where(pe_targets.c.pe_id == pe_id))
    conn.execute(delete(nbd_ports).where(nbd_ports.c.pe_id == pe_id))
    conn.execute(delete(pes).where(pes.c.id == pe_id))


def target_for(conn: Connection, pe_id: str, owner: str) -> tuple[int, str] | None:
    row = conn.execute(
        select(pe_targets).where(pe_targets.c.pe_id == pe_id).where(pe_targets.c.owner == owner)
    ).first()
    return (row.tid, row.iqn) if row else None


def lock_pe(conn: Connection, pe_id: str) -> None:
    """Hold endpoint ``pe_id``'s row until the transaction ends, so the targets and
    LUNs of one endpoint are chosen by one writer at a time (PostgreSQL; SQLite's
    BEGIN IMMEDIATE already serialises every writer and leaves FOR UPDATE out)."""
    conn.execute(select(pes.c.id).where(pes.c.id == pe_id).with_for_update())


def add_target(conn: Connection, pe_id: str, owner: str, iqn: str) -> int:
    """A new target of ``pe_id`` with the next tid; call under :func:`lock_pe`."""
    top = conn.execute(
        select(func.max(pe_targets.c.tid)).where(pe_targets.c.pe_id == pe_id)
    ).scalar()
    tid = int(top or 0) + 1
    conn.execute(pe_targets.insert().values(pe_id=pe_id, owner=owner, tid=tid, iqn=iqn))
    return tid


def targets(conn: Connection, pe_id: str) -> dict[int, tuple[str, str]]:
    """tid -> (owner, iqn)"""
    rows = conn.execute(select(pe_targets).where(pe_targets.c.pe_id == pe_id))
    return {r.tid: (r.owner, r.iqn) for r in rows}


def targets_of(conn: Connection, owner: str) -> list[tuple[str, int]]:
    """(PE id, tid) of every target made for host ``owner``."""
    rows = conn.execute(select(pe_targets).where(pe_targets.c.owner == owner))
    return [(r.pe_id, r.tid) for r in rows]


def delete_targets_of(conn: Connection, owner: str) -> None:
    conn.execute(delete(pe_targets).where(pe_targets.c.owner == owner))


# -- bindings ----------------------------------------------------------------------------
def _binding(row: Row[Any]) -> Binding:
    return Binding(
        vvol=row.vvol_id,
        host=row.host,
        pe=row.pe_id,
        secondary_id=row.secondary_id,
        tid=row.tid,
        readonly=bool(row.readonly),
        shared=bool(row.shared),
        refcount=row.refcount,
        state=row.state,
        op=row.op_id,
        created=row.created,
    )


def insert_binding(conn: Connection, b: Binding, owner: str | None = None) -> None:
    """Insert ``b``; ``owner`` is the control-plane replica attaching it."""
    values = {_BCOL.get(k, k): v for k, v in asdict(b).items()}
    conn.execute(bindings.insert().values(owner=owner, **values))


def get_binding(conn: Connection, vvol_id: str, host: str) -> Binding | None:
    """The binding a host uses for a vvol (not one that is being made or dropped)."""
    row = conn.execute(
        select(bindings)
        .where(bindings.c.vvol_id == vvol_id)
        .where(bindings.c.host == host)
        .where(bindings.c.state == ACTIVE)
    ).first()
    return _binding(row) if row else None


def find_bindings(
    conn: Connection, *, vvol: str | None = None, host: str | None = None, pe: str | None = None
) -> list[Binding]:
    if vvol and host and not pe:
        return [_binding(r) for r in conn.execute(_OF_VVOL_HOST, {"k_vvol": vvol, "k_host": host})]
    q = select(bindings).order_by(bindings.c.created, bindings.c.vvol_id)
    if vvol:
        q = q.where(bindings.c.vvol_id == vvol)
    if host:
        q = q.where(bindings.c.host == host)
    if pe:
        q = q.where(bindings.c.pe_id == pe)
    return [_binding(r) for r in conn.execute(q)]


def page_bindings(
    conn: Connection,
    *,
    vvol: str | None = None,
    host: str | None = None,
    after: tuple[str, str] | None = None,
    limit: int,
) -> list[Binding]:
    """At most ``limit`` bindings in (vvol, host) order, those after the key
    ``after``: a page read through the primary key, not the whole table."""
    order = (bindings.c.vvol_id, bindings.c.host, bindings.c.pe_id)
    q = select(bindings).order_by(*order).limit(limit)
    if vvol:
        q = q.where(bindings.c.vvol_id == vvol)
    if host:
        q = q.where(bindings.c.host == host)
    if after is not None:
        q = q.where(tuple_(bindings.c.vvol_id, bindings.c.host) > tuple_(*after))
    return [_binding(r) for r in conn.execute(q)]


def _key(b: Binding) -> dict[str, str]:
    return {"k_vvol": b.vvol, "k_host": b.host, "k_pe": b.pe}


def set_binding(conn: Connection, b: Binding, **values: Any) -> None:
    conn.execute(_UPDATE, {**_key(b), **{_BCOL.get(k, k): v for k, v in values.items()}})


def delete_binding(conn: Connection, b: Binding) -> None:
    conn.execute(_DELETE, _key(b))


def used_secondaries(conn: Connection, pe_id: str, tid: int | None = None) -> set[str]:
    q = select(bindings.c.secondary_id).where(bindings.c.pe_id == pe_id)
    if tid is not None:
        q = q.where(bindings.c.tid == tid)
    return {r[0] for r in conn.execute(q)}


# -- hints: a vvol rebound for the same host and endpoint gets its old LUN back ----------
def set_hint(conn: Connection, vvol_id: str, host: str, pe_id: str, secondary: str) -> None:
    conn.execute(
        delete(binding_hints).where(
            (binding_hints.c.vvol_id == vvol_id)
            & (binding_hints.c.host == host)
            & (binding_hints.c.pe_id == pe_id)
        )
    )
    conn.execute(
        binding_hints.insert().values(
            vvol_id=vvol_id, host=host, pe_id=pe_id, secondary_id=secondary
        )
    )


def drop_hints(conn: Connection, vvol_id: str) -> None:
    conn.execute(delete(binding_hints).where(binding_hints.c.vvol_id == vvol_id))


def drop_host_hints(conn: Connection, host: str) -> None:
    conn.execute(delete(binding_hints).where(binding_hints.c.host == host))


def hints_for(conn: Connection, pe_id: str, host: str) -> dict[str, str]:
    """vvol -> the secondary id it last had for this host on this endpoint."""
    rows = conn.execute(
        select(binding_hints.c.vvol_id, binding_hints.c.secondary_id).where(
            (binding_hints.c.pe_id == pe_id) & (binding_hints.c.host == host)
        )
    )
    return {str(r[0]): str(r[1]) for r in rows}
