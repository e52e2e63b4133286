"""Tenants, bearer tokens and who may do what.

Tokens are random and shown once; the catalog keeps only their SHA-256.  The unix
socket (root only) and admin tokens act as ``admin``; a host token acts as that
host, inside its tenant: it sees and touches only its tenant's vvols and
datastores, binds only for itself, and manages no arrays, containers or endpoints.
Objects of another tenant are reported as not found.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from sqlalchemy import Connection

from ..catalog import bindrepo, tenancy
from ..errors import AlreadyExists, Forbidden, InUse, NotFound, Unauthorized
from ..model import ADMIN, HOST, Principal
from ..units import check_name
from .context import Context

UNIX_ADMIN = Principal(kind=ADMIN, name="unix-socket")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TenantOps:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, name: str) -> dict[str, Any]:
        check_name(name, what="tenant")
        with self.ctx.db.tx() as conn:
            if tenancy.get_tenant(conn, name):
                raise AlreadyExists(kind="tenant", ref=name)
            tenancy.insert_tenant(conn, name, time.time())
            return tenancy.get_tenant(conn, name) or {}

    def get(self, conn: Connection, name: str) -> dict[str, Any]:
        found = tenancy.get_tenant(conn, name)
        if found is None:
            raise NotFound(kind="tenant", ref=name)
        return found

    def listing(self) -> list[dict[str, Any]]:
        with self.ctx.db.tx() as conn:
            return tenancy.list_tenants(conn)

    def delete(self, name: str) -> None:
        with self.ctx.db.tx() as conn:
            self.get(conn, name)
            users = [h.name for h in bindrepo.list_hosts(conn) if h.tenant == name]
            users += [d.name for d in tenancy.list_datastores(conn, tenant=name)]
            if users:
                raise InUse(kind="tenant", ref=name, reason=f"{', '.join(users)} belong to it")
            tenancy.delete_tenant(conn, name)

    # -- tokens ---------------------------------------------------------------------------
    def issue(self, conn: Connection, kind: str, subject: str) -> str:
        """A new token for ``subject``, replacing its earlier ones; returned once."""
        token = secrets.token_urlsafe(32)
        tenancy.delete_tokens(conn, kind, subject)
        tenancy.insert_token(conn, digest(token), kind, subject, time.time())
        return token

    def admin_token(self, name: str) -> dict[str, str]:
        check_name(name, what="admin token name")
        with self.ctx.db.tx() as conn:
            return {"name": name, "token": self.issue(conn, ADMIN, name)}

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized(detail="a bearer token is required")
        with self.ctx.db.tx() as conn:
            found = tenancy.token(conn, digest(token))
            if found is None:
                raise Unauthorized(detail="the token is not valid")
            kind, subject = found
            if kind == ADMIN:
                return Principal(kind=ADMIN, name=subject)
            host = bindrepo.get_host(conn, subject)
            if host is None:
                raise Unauthorized(detail="the token's host is gone")
            return Principal(kind=HOST, name=host.name, tenant=host.tenant)


class Authz:
    """Checks made at the API edge before an operation runs."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @staticmethod
    def admin(p: Principal) -> None:
        if not p.is_admin:
            raise Forbidden(detail=f"host {p.name} may not do this: it needs an admin token")

    @staticmethod
    def visible(p: Principal, tenant: str | None) -> bool:
        return p.is_admin or (tenant is not None and tenant == p.tenant)

    def vvol(self, p: Principal, ref: str) -> None:
        self.vvols(p, [ref])

    def vvols(self, p: Principal, refs: list[str]) -> None:
        """A host may name only its tenant's vvols (others are 'not found'); an admin
        may name any, and missing ones are reported by the operation itself."""
        if p.is_admin:
            return
        with self.ctx.db.tx() as conn:
            for ref in refs:
                if not self.visible(p, self.ctx.vvol(conn, ref).tenant):
                    raise NotFound(kind="vvol", ref=ref)

    def host(self, p: Principal, name: str) -> None:
        if not p.is_admin and p.name != name:
            raise Forbidden(detail=f"host {p.name} may only act for itself, not for {name}")

    def shared_pool(self, p: Principal, tenant: str | None, kind: str, ref: str) -> None:
        """A container or datastore a caller may carve from: its own tenant's, or an
        untenanted (shared) one."""
        if not p.is_admin and tenant not in (None, p.tenant):
            raise NotFound(kind=kind, ref=ref)
