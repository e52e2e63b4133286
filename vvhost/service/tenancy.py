"""Tenants, bearer tokens and who may do what.

Tokens are random and shown once; the catalog keeps only their SHA-256.  The unix
socket (root only) and admin tokens act as ``admin``; a host token acts as that
host, inside its tenant: it sees and touches only its tenant's vvols and
datastores, binds only for itself, and manages no arrays, containers or endpoints.
Objects of another tenant are reported as not found, in the very words used for
objects that do not exist, and names resolve inside the caller's tenant:

    host of tenant A names "db"  ->  A's vvol "db"   (B's "db" is never considered)
    host of tenant A names B-id  ->  vvol 'B-id' not found   (same as a made-up id)

Operations started with a caller-chosen id remember their owner; only that
owner (or an admin) may read their progress, and an id is used once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from sqlalchemy import Connection

from ..catalog import bindrepo, repo, tenancy
from ..errors import AlreadyExists, Conflict, Forbidden, InUse, NotFound, Unauthorized
from ..model import ADMIN, HOST, Principal, Vvol
from ..units import check_name
from .context import Context

UNIX_ADMIN = Principal(kind=ADMIN, name="unix-socket")
TOUCH_EVERY = 60.0  # seconds between two records of a token's last use
OP_OWNER_DAYS = 30  # how long a used operation id is remembered


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
            users = tenancy.tenant_users(conn, name)
            if users:
                what = "; ".join(
                    f"{kind} {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                    for kind, names in users.items()
                )
                raise InUse(kind="tenant", ref=name, reason=f"{what} belong to it")
            tenancy.delete_tenant(conn, name)

    def check_exists(self, conn: Connection, name: str | None) -> None:
        """Objects may only name a tenant that exists."""
        if name is not None:
            self.get(conn, name)

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

    def admin_tokens(self) -> list[dict[str, Any]]:
        """Admin tokens by name, with when they were made and last used (never the secret)."""
        with self.ctx.db.tx() as conn:
            return tenancy.list_tokens(conn, ADMIN)

    def revoke_admin_token(self, name: str) -> dict[str, Any]:
        """Revoke admin token ``name``: the next request carrying it is refused.  The last
        one may go too: root on the unix socket stays admin, and says so."""
        check_name(name, what="admin token name")
        with self.ctx.db.tx() as conn:
            if not any(t["name"] == name for t in tenancy.list_tokens(conn, ADMIN)):
                raise NotFound(kind="admin token", ref=name)
            tenancy.delete_tokens(conn, ADMIN, name)
            left = len(tenancy.list_tokens(conn, ADMIN))
        return {"name": name, "revoked": True, "admin_tokens_left": left}

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized(detail="a bearer token is required")
        key = digest(token)
        with self.ctx.db.tx() as conn:
            found = tenancy.token(conn, key)
            if found is None:
                raise Unauthorized(detail="the token is not valid")
            kind, subject = found
            last = tenancy.token_last_used(conn, key)
            now = time.time()
            # often enough that a host calling in is never reported unreachable
            every = min(TOUCH_EVERY, self.ctx.config.unreachable_after / 4)
            if last is None or last < now - every:
                tenancy.touch_token(conn, key, now, every)
            if kind == ADMIN:
                return Principal(kind=ADMIN, name=subject)
            host = bindrepo.get_host(conn, subject)
            if host is None:
                raise Unauthorized(detail="the token's host is gone")
            if host.fenced is not None:
                raise Forbidden(
                    detail=f"host {host.name} is fenced: an admin must unfence it first"
                )
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

    def vvol(self, p: Principal, ref: str) -> str:
        return self.vvols(p, [ref])[0]

    def vvols(self, p: Principal, refs: list[str]) -> list[str]:
        """The refs the operation should use.  A host's names and ids resolve inside its
        tenant only (to ids, so the operation cannot pick another tenant's vvol of the
        same name); an admin's pass unchanged and missing ones are reported by the
        operation itself."""
        if p.is_admin:
            return list(refs)
        with self.ctx.db.tx() as conn:
            return [self.resolve(conn, p, ref).id for ref in refs]

    def resolve(self, conn: Connection, p: Principal, ref: str) -> Vvol:
        """``ref`` (id or name) among the vvols ``p`` may see; NotFound otherwise."""
        return self.ctx.vvol(conn, ref, tenant=None if p.is_admin else (p.tenant or ""))

    @staticmethod
    def creator(p: Principal, what: str) -> None:
        """A host outside every tenant could never see what it makes: refuse up front."""
        if not p.is_admin and p.tenant is None:
            raise Forbidden(
                detail=f"host {p.name} belongs to no tenant, so it may not create {what}: "
                "it could never see them (add the host to a tenant)"
            )

    # -- operation owners -----------------------------------------------------------------
    def claim_op(self, p: Principal, op_id: str | None) -> str:
        """Remember who starts operation ``op_id`` (a new id when None; the event
        log names them); an id already used is refused.  Returns the id."""
        op_id = self.ctx.new_op(op_id)
        now = time.time()
        with self.ctx.db.tx() as conn:
            tenancy.prune_op_owners(conn, now - OP_OWNER_DAYS * 86400)
            if any(e.id == op_id for e in repo.journal_list(conn)) or not tenancy.claim_op(
                conn, op_id, p.kind, p.name, now
            ):
                raise Conflict(detail=f"operation id {op_id} was used before; use a new one")
        return op_id

    def op_visible(self, p: Principal, op_id: str) -> bool:
        if p.is_admin:
            return True
        with self.ctx.db.tx() as conn:
            return tenancy.op_owner(conn, op_id) == (p.kind, p.name)

    def host(self, p: Principal, name: str) -> None:
        if not p.is_admin and p.name != name:
            raise Forbidden(detail=f"host {p.name} may only act for itself, not for {name}")

    def shared_pool(self, p: Principal, tenant: str | None, kind: str, ref: str) -> None:
        """A container or datastore a caller may carve from: its own tenant's, or an
        untenanted (shared) one."""
        if not p.is_admin and tenant not in (None, p.tenant):
            raise NotFound(kind=kind, ref=ref)
