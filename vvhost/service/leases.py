"""Per-VM leases: one VM operation at a time, held in the catalog.

A VM is named by its config vvol.  A lease row says who runs which operation on
it and until when::

    vm_leases   vvol_id (config vvol)  tenant  op  host  pid  token  since  expires  epoch

    acquire   no row, or the row expired          -> a new row (epoch + 1, new token)
              a live row of this host whose owner
              the host found dead (``dead_epoch``) -> taken over at once
              a live row with another token       -> VmBusy "busy: OP since TIME on HOST"
    renew     the row still carries our token     -> expires = now + ttl
              otherwise (released, taken over)    -> LeaseLost
    release   delete the row if it carries our token (idempotent)

An owner that died stops renewing; once ``expires`` has passed the next acquire
takes the lease over and reports whose it was (``taken_over``), and the host
side recovers the dead owner's pending operation as usual.  Times are the
control plane's clock, so hosts' clocks do not matter.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from ..catalog.schema import vm_leases
from ..errors import InvalidInput, LeaseLost, NotFound, VmBusy
from .context import Context

MIN_TTL = 1.0
MAX_TTL = 3600.0


@dataclass(frozen=True)
class Lease:
    vvol: str
    tenant: str | None
    op: str
    host: str
    pid: int
    token: str
    since: float
    expires: float
    epoch: int

    def public(self, now: float) -> dict[str, Any]:
        out = asdict(self)
        out.pop("token")
        out["since_utc"] = utc(self.since)
        out["expires_in"] = round(self.expires - now, 3)
        return out


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class LeaseOps:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _config(self, conn: Connection, ref: str) -> tuple[str, str | None]:
        v = self.ctx.vvol(conn, ref)
        if v.type != "config":
            raise InvalidInput(
                detail=f"vvol {ref!r} is a {v.type} vvol; a VM is leased by its config vvol"
            )
        return v.id, v.tenant

    @staticmethod
    def _row(conn: Connection, vid: str) -> Lease | None:
        row = conn.execute(select(vm_leases).where(vm_leases.c.vvol_id == vid)).first()
        if row is None:
            return None
        m = row._mapping
        return Lease(
            vvol=m["vvol_id"],
            tenant=m["tenant"],
            op=m["op"],
            host=m["host"],
            pid=int(m["pid"]),
            token=m["token"],
            since=float(m["since"]),
            expires=float(m["expires"]),
            epoch=int(m["epoch"]),
        )

    @staticmethod
    def _ttl(ttl: float) -> float:
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise InvalidInput(
                detail=f"a lease lasts {MIN_TTL:g} to {MAX_TTL:g} seconds, not {ttl:g}"
            )
        return ttl

    def acquire(
        self, ref: str, host: str, op: str, pid: int, ttl: float, dead_epoch: int | None = None
    ) -> dict[str, Any]:
        """Take the VM's lease, or take over an expired one; refuse a live one unless
        it is this host's and the host says its owner process is gone (``dead_epoch``)."""
        ttl = self._ttl(ttl)
        with self.ctx.db.tx() as conn:
            vid, tenant = self._config(conn, ref)
            now = time.time()
            old = self._row(conn, vid)
            dead = old is not None and old.host == host and old.epoch == dead_epoch
            if old is not None and old.expires > now and not dead:
                raise VmBusy(
                    op=old.op,
                    since=utc(old.since),
                    host=old.host,
                    pid=old.pid,
                    epoch=old.epoch,
                    ref=vid,
                    state="leased",
                )
            lease = Lease(
                vvol=vid,
                tenant=tenant,
                op=op,
                host=host,
                pid=pid,
                token=secrets.token_hex(16),
                since=now,
                expires=now + ttl,
                epoch=(old.epoch if old else 0) + 1,
            )
            values = asdict(lease)
            values["vvol_id"] = values.pop("vvol")
            if old is None:
                conn.execute(insert(vm_leases).values(**values))
            else:
                conn.execute(update(vm_leases).where(vm_leases.c.vvol_id == vid).values(**values))
                why = "its owner process died" if dead else "it stopped renewing it"
                self.ctx.events.emit_in(
                    conn,
                    "lease.taken-over",
                    f"host {host} took over the lease of VM {vid} from host {old.host} "
                    f"({old.op}, epoch {old.epoch}): {why}",
                    severity="warning",
                    subject=f"host:{old.host}",
                    fields={"vm": vid, "from": old.host, "to": host, "op": old.op, "dead": dead},
                    tenant=tenant,
                )
        out = lease.public(now)
        out["token"] = lease.token
        out["taken_over"] = old.public(now) if old is not None else None
        return out

    def renew(self, ref: str, token: str, ttl: float) -> dict[str, Any]:
        ttl = self._ttl(ttl)
        with self.ctx.db.tx() as conn:
            vid, _tenant = self._config(conn, ref)
            now = time.time()
            done = conn.execute(
                update(vm_leases)
                .where(vm_leases.c.vvol_id == vid, vm_leases.c.token == token)
                .values(expires=now + ttl)
            )
            if done.rowcount != 1:
                held = self._row(conn, vid)
                reason = (
                    f"{held.host} holds it for {held.op} since {utc(held.since)}"
                    if held
                    else "it was released"
                )
                raise LeaseLost(ref=vid, reason=reason)
            lease = self._row(conn, vid)
        assert lease is not None
        return lease.public(now)

    def release(self, ref: str, token: str) -> dict[str, Any]:
        """Drop the lease if ``token`` holds it."""
        try:
            with self.ctx.db.tx() as conn:
                vid, _tenant = self._config(conn, ref)
        except NotFound:
            return self.release_orphan(ref, token)
        with self.ctx.db.tx() as conn:
            done = conn.execute(
                delete(vm_leases).where(vm_leases.c.vvol_id == vid, vm_leases.c.token == token)
            )
        return {"vvol": vid, "released": done.rowcount == 1}

    def release_orphan(self, vvol_id: str, token: str) -> dict[str, Any]:
        """A VM deleted under its lease: its holder releases by the config vvol's id
        and the token; anything else is 'not found', as the vvol is."""
        with self.ctx.db.tx() as conn:
            done = conn.execute(
                delete(vm_leases).where(vm_leases.c.vvol_id == vvol_id, vm_leases.c.token == token)
            )
        if done.rowcount != 1:
            raise NotFound(kind="vvol", ref=vvol_id)
        return {"vvol": vvol_id, "released": True}

    def show(self, ref: str) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            vid, _tenant = self._config(conn, ref)
            lease = self._row(conn, vid)
        now = time.time()
        return {"vvol": vid, "lease": lease.public(now) if lease and lease.expires > now else None}
