"""Counts for metrics: vvols by state and type, bindings by state."""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from .schema import bindings, vvols


def vvols_by_state(conn: Connection) -> list[tuple[str, str, int]]:
    """(state, type, count) of every vvol."""
    q = select(vvols.c.state, vvols.c.type, func.count()).group_by(vvols.c.state, vvols.c.type)
    return [(str(s), str(t), int(n)) for s, t, n in conn.execute(q)]


def bindings_by_state(conn: Connection) -> list[tuple[str, int]]:
    q = select(bindings.c.state, func.count()).group_by(bindings.c.state)
    return [(str(s), int(n)) for s, n in conn.execute(q)]
