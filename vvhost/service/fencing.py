"""Host fencing: cut a host off every endpoint and the API, so its VMs can run
elsewhere without it writing again; and each host's last contact.

    host fence NAME
      1  one transaction (the intent): hosts.fenced = now, every binding of the
         host -> state "fenced", the VM leases it holds released, journal
         entry ("fence", args {"host": NAME})                    crash point fence:marked
      2  at every endpoint, idempotently:
           iSCSI  the host's targets are deleted (ACL, CHAP account, LUNs and
                  logged-in sessions)
           NBD    its TLS credentials are forgotten and its per-host daemons stop
                  (unix NBD, file: the fenced bindings' exports are withdrawn)
           RBD    its Ceph identity is removed on every cluster and its live
                  sessions blocklisted (pe/cephfence.py)
      3  the journal entry goes; event host.fenced
    A crash between 1 and 3 leaves the journal entry: the next start of the
    control plane runs 2 and 3 again (``resume``).  Fencing a fenced host only
    runs 2 again.

    host unfence NAME   (explicit; nothing comes back by itself)
      the host's fenced bindings are dropped (its VMs were recovered elsewhere or
      must be started again), hosts.fenced = NULL, new NBD credentials and a new
      iSCSI CHAP account; its token
      works again and its next binds grant access as for any host; event
      host.unfenced

    vm recover (host side) asks ``recover_check`` first: the VM's vvols may not
    be in use by another host that is not fenced.

A host's last contact is the last use of its token (recorded at most once a
minute, tenancy.TOUCH_EVERY).  ``watch`` (a background round) reports each host
silent for longer than ``Config.unreachable_after`` once, with event
host.unreachable, until it calls in again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Connection, delete

from ..catalog import bindrepo, chaprepo, repo, tenancy
from ..catalog.schema import vm_leases
from ..errors import Conflict, InvalidInput, NotFound, VvhostError
from ..model import ACTIVE, ATTACHING, FENCED, HOST, Host
from .context import Context
from .endpoints import EndpointManager
from .nbdcreds import NbdCredentials

log = logging.getLogger("vvhost.fencing")

OP = "fence"


class FenceOps:
    def __init__(self, ctx: Context, manager: EndpointManager, nbd: NbdCredentials) -> None:
        self.ctx = ctx
        self.manager = manager
        self.nbd = nbd
        self._silent: set[str] = set()  # hosts reported unreachable (until they call in)

    # -- fence ----------------------------------------------------------------------------
    def fence(self, name: str) -> dict[str, Any]:
        with self.ctx.locks.hold([f"host:{name}"]):
            op = self.ctx.new_op()
            with self.ctx.db.tx() as conn:
                host = _host(conn, name)
                pending = _entry_of(conn, name)
                if pending is not None:
                    op = pending.id
                    marked = {"bindings": 0, "leases": []}
                else:
                    marked = self._mark(conn, host, op)
            self.ctx.fault("fence", "marked")
            blocked = self._cut(name)
            with self.ctx.db.tx() as conn:
                host = _host(conn, name)
                repo.journal_remove(conn, op)
                self._event(conn, host, "host.fenced", {**marked, "blocklisted": blocked})
        return {
            "name": name,
            "fenced": host.fenced,
            "bindings": marked["bindings"],
            "leases_released": marked["leases"],
            "blocklisted": blocked,
        }

    def _mark(self, conn: Connection, host: Host, op: str) -> dict[str, Any]:
        now = host.fenced or time.time()
        bindrepo.set_fenced(conn, host.name, now)
        cut = 0
        for b in bindrepo.find_bindings(conn, host=host.name):
            if b.state in (ACTIVE, ATTACHING):
                bindrepo.set_binding(conn, b, state=FENCED, op=None)
                cut += 1
        held = conn.execute(vm_leases.select().where(vm_leases.c.host == host.name)).all()
        conn.execute(delete(vm_leases).where(vm_leases.c.host == host.name))
        self.ctx.journal(conn, op, OP, None, {"host": host.name})
        return {"bindings": cut, "leases": sorted(r.vvol_id for r in held)}

    def _cut(self, name: str) -> list[str]:
        """Step 2: every endpoint stops serving the host (idempotent); returns the
        Ceph client addresses blocklisted."""
        with self.ctx.db.tx() as conn:
            pes = bindrepo.list_pes(conn)
        blocked = self.manager.rbd.fence(name)  # an unreachable cluster fails the fence
        self.nbd.revoke(name, True)
        for pe in pes:
            self.manager.resync(pe)
        return blocked

    def resume(self) -> list[str]:
        """At start, after the endpoints run: finish every fence a crash interrupted."""
        with self.ctx.db.tx() as conn:
            hosts = [str(e.args["host"]) for e in repo.journal_list(conn) if e.op == OP]
        done = []
        for name in hosts:
            try:
                self.fence(name)
                done.append(name)
            except VvhostError as exc:
                log.error("fence of host %s not finished: %s", name, exc)
        return done

    # -- unfence --------------------------------------------------------------------------
    def unfence(self, name: str) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            host = _host(conn, name)
            if host.fenced is None:
                raise InvalidInput(detail=f"host {name} is not fenced")
            unfinished = _entry_of(conn, name) is not None
        if unfinished:  # the cut finishes before anything comes back
            self.fence(name)
        with self.ctx.locks.hold([f"host:{name}"]):
            with self.ctx.db.tx() as conn:
                host = _host(conn, name)
                dropped = [b for b in bindrepo.find_bindings(conn, host=name) if b.state == FENCED]
                for b in dropped:
                    bindrepo.delete_binding(conn, b)
                bindrepo.set_fenced(conn, name, None)
                chaprepo.issue(conn, name)  # a new CHAP account for its next targets
                self._event(conn, host, "host.unfenced", {"bindings": len(dropped)})
        self.nbd.revoke(name, False)  # new credentials; the old ones stay refused
        self._silent.discard(name)
        return {"name": name, "fenced": None, "bindings_dropped": len(dropped)}

    # -- recovery of a VM elsewhere --------------------------------------------------------
    def recover_check(self, vvols: list[str], host: str) -> dict[str, Any]:
        """May ``host`` start the VM whose vvols are ``vvols``?  Only when no other
        host that is not fenced has any of them bound (the VM runs nowhere else)."""
        if not vvols:
            raise InvalidInput(detail="a VM to recover names its vvols")
        with self.ctx.db.tx() as conn:
            _host(conn, host)
            fenced_from: set[str] = set()
            for ref in vvols:
                v = self.ctx.vvol(conn, ref)
                for b in bindrepo.find_bindings(conn, vvol=v.id):
                    if b.host == host:
                        continue
                    owner = bindrepo.get_host(conn, b.host)
                    if owner is not None and owner.fenced is None:
                        raise Conflict(
                            detail=f"vvol {ref} is bound for host {b.host}, which is not "
                            f"fenced: stop the VM there or fence {b.host} first"
                        )
                    fenced_from.add(b.host)
        return {"host": host, "vvols": len(vvols), "fenced_hosts": sorted(fenced_from)}

    # -- last contact ---------------------------------------------------------------------
    def contacts(self) -> list[dict[str, Any]]:
        """Each host with its last contact and state: fenced, unreachable, ok, new."""
        now = time.time()
        with self.ctx.db.tx() as conn:
            hosts = bindrepo.list_hosts(conn)
            seen = tenancy.last_used_by(conn, HOST)
        out = []
        for h in hosts:
            last = seen.get(h.name)
            out.append({**h.to_dict(), "last_contact": last, "state": self._state(h, last, now)})
        return out

    def contact(self, name: str) -> dict[str, Any]:
        """One host's last contact and state (as in ``contacts``)."""
        found = [h for h in self.contacts() if h["name"] == name]
        if not found:
            raise NotFound(kind="host", ref=name)
        return {"last_contact": found[0]["last_contact"], "state": found[0]["state"]}

    def _state(self, h: Host, last: float | None, now: float) -> str:
        return host_state(h, last, now, self.ctx.config.unreachable_after)

    def watch(self) -> None:
        """The background round (``vvhost serve``)."""
        self.report_unreachable()

    def report_unreachable(self) -> list[str]:
        """An event for each host that became unreachable; returns them."""
        newly = []
        for h in self.contacts():
            name = h["name"]
            if h["state"] != "unreachable":
                self._silent.discard(name)
                continue
            if name in self._silent:
                continue
            self._silent.add(name)
            newly.append(name)
            silent = round(time.time() - h["last_contact"])
            self.ctx.events.emit(
                "host.unreachable",
                f"host {name} has not called in for {silent} s",
                severity="warning",
                subject=f"host:{name}",
                fields={"host": name, "last_contact": h["last_contact"], "silent": silent},
                tenant=h["tenant"],
            )
        return newly

    def _event(self, conn: Connection, host: Host, kind: str, fields: dict[str, Any]) -> None:
        what = "fenced: cut off every endpoint" if kind == "host.fenced" else "unfenced"
        self.ctx.events.emit_in(
            conn,
            kind,
            f"host {host.name} {what}",
            severity="warning" if kind == "host.fenced" else "info",
            subject=f"host:{host.name}",
            fields={"host": host.name, **fields},
            tenant=host.tenant,
        )


def host_state(h: Host, last: float | None, now: float, after: float) -> str:
    """fenced; new (never called in); unreachable (silent for more than ``after`` s); ok."""
    if h.fenced is not None:
        return "fenced"
    if last is None:
        return "new"
    return "unreachable" if now - last > after else "ok"


def _host(conn: Connection, name: str) -> Host:
    host = bindrepo.get_host(conn, name)
    if host is None:
        raise NotFound(kind="host", ref=name)
    return host


def _entry_of(conn: Connection, name: str) -> Any:
    return next(
        (e for e in repo.journal_list(conn) if e.op == OP and e.args.get("host") == name), None
    )
