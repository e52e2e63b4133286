"""Hosts' CHAP accounts for iSCSI endpoints (table ``iscsi_chap``).

A host's account is a user name and a secret, both made anew together whenever
they change (host added, token rotated, host unfenced): a user name therefore
stands for one secret forever, so an endpoint that already has an account of
that name (a tgtd adopted after a restart of the control plane) has the right
secret, and the old and new accounts can both exist while a target switches.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Connection, delete, select

from .schema import iscsi_chap

SECRET_BYTES = 12  # 24 hex characters: RFC 3720 asks for at least 12 bytes of secret


def new_account(host: str) -> tuple[str, str]:
    """A fresh (user name, secret) for ``host``."""
    return f"{host}.{secrets.token_hex(4)}", secrets.token_hex(SECRET_BYTES)


def get(conn: Connection, host: str) -> tuple[str, str] | None:
    row = conn.execute(select(iscsi_chap).where(iscsi_chap.c.host == host)).first()
    return (row.username, row.secret) if row else None


def issue(conn: Connection, host: str) -> tuple[str, str]:
    """Give ``host`` a new account (replacing the one it had)."""
    user, secret = new_account(host)
    conn.execute(delete(iscsi_chap).where(iscsi_chap.c.host == host))
    conn.execute(iscsi_chap.insert().values(host=host, username=user, secret=secret))
    return user, secret


def forget(conn: Connection, host: str) -> None:
    conn.execute(delete(iscsi_chap).where(iscsi_chap.c.host == host))
