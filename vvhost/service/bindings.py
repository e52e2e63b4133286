"""Binding vvols to hosts through protocol endpoints.

    bind    (vvol, host) -> (PE, secondary id), reference counted per (vvol, host)
    unbind  decrement; at zero (or --all) the LUN / export / file goes
    rebind  new path first (another PE), then the old one is dropped

Rows are keyed (vvol, host, PE) and carry a state: ``attaching`` while the
endpoint is being told, ``active`` once it serves the binding, ``detaching``
while it is being removed.  A crash leaves only the journal entry and rows in a
transient state; recovery drops those rows and endpoint reconciliation then
makes every daemon present exactly the active bindings.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import Connection

from ..catalog import bindrepo, repo, vvolrepo
from ..errors import InUse, InvalidInput, NotFound, VvhostError
from ..model import ACTIVE, ATTACHING, DETACHING, Binding, Host, JournalEntry, Pe, Vvol
from .context import Context
from .endpoints import EndpointManager, PeOps, attachment
from .hosts import HostOps

MAX_BATCH = 1024
MAX_LUN = 255


def _error(ref: str, exc: VvhostError) -> dict[str, Any]:
    return {"vvol": ref, "ok": False, "error": {"code": exc.code, "message": exc.message}}


def ensure_unbound(conn: Connection, v: Vvol, action: str) -> None:
    """Refuse ``action`` on a vvol some host has bound, naming the binding."""
    found = bindrepo.find_bindings(conn, vvol=v.id)
    if found:
        b = found[0]
        pe = bindrepo.get_pe(conn, b.pe)
        raise InUse(
            kind="vvol",
            ref=v.name or v.id,
            reason=f"bound to host {b.host} through endpoint {pe.name if pe else b.pe}; "
            f"unbind it before you {action}",
        )


class BindingOps:
    def __init__(self, ctx: Context, hosts: HostOps, pes: PeOps, manager: EndpointManager) -> None:
        self.ctx = ctx
        self.hosts = hosts
        self.pes = pes
        self.manager = manager

    # -- bind -------------------------------------------------------------------------------
    def bind(
        self, refs: list[str], host: str, pe: str | None = None, shared: bool = False
    ) -> list[dict[str, Any]]:
        if not refs or len(refs) > MAX_BATCH:
            raise InvalidInput(detail=f"bind takes 1 to {MAX_BATCH} vvols")
        op = self.ctx.new_op()
        results: list[dict[str, Any] | None] = [None] * len(refs)
        with self.ctx.db.tx() as conn:
            h = self.hosts.get(conn, host)
            chosen = self.pes.get(conn, pe) if pe else None
            ids = self._resolve(conn, refs, results)
        new: list[tuple[int, Binding]] = []
        kept: list[tuple[int, Binding]] = []
        with self.ctx.locks.hold(ids.values()):
            with self.ctx.db.tx() as conn:
                every_pe = bindrepo.list_pes(conn)
                for i, vid in ids.items():
                    try:
                        v = self.ctx.ready(self._vvol(conn, vid))
                        existing = bindrepo.get_binding(conn, vid, host)
                        if existing is not None:
                            if chosen and existing.pe != chosen.id:
                                raise InUse(
                                    kind="vvol",
                                    ref=refs[i],
                                    reason=f"bound for {host} through another endpoint; use rebind",
                                )
                            kept.append((i, existing))
                            continue
                        target = chosen or _auto_pe(every_pe, v)
                        b = self._allocate(conn, target, v, h, shared, op, refcount=1)
                        bindrepo.insert_binding(conn, b)
                        new.append((i, b))
                    except VvhostError as exc:
                        results[i] = _error(refs[i], exc)
                if new:
                    self.ctx.journal(conn, op, "bind", None, {"host": host})
            failed = self._attach_all(new, refs, results)
            self.ctx.fault("bind", "attached")
            with self.ctx.db.tx() as conn:
                for _i, b in new:
                    if b in failed:
                        bindrepo.delete_binding(conn, b)
                    else:
                        bindrepo.set_binding(conn, b, state=ACTIVE, op=None)
                for _i, b in kept:
                    bindrepo.set_binding(conn, b, refcount=b.refcount + 1)
                if new:
                    repo.journal_remove(conn, op)
                for i, b in new + kept:
                    if b not in failed:
                        fresh = bindrepo.get_binding(conn, b.vvol, b.host)
                        assert fresh is not None
                        results[i] = {
                            "vvol": refs[i],
                            "ok": True,
                            "handle": self.handle(conn, fresh),
                        }
        return [r for r in results if r is not None]

    def _resolve(
        self, conn: Connection, refs: list[str], results: list[dict[str, Any] | None]
    ) -> dict[int, str]:
        ids: dict[int, str] = {}
        for i, ref in enumerate(refs):
            try:
                ids[i] = self.ctx.vvol(conn, ref).id
            except VvhostError as exc:
                results[i] = _error(ref, exc)
        return ids

    @staticmethod
    def _vvol(conn: Connection, vid: str) -> Vvol:
        v = vvolrepo.get(conn, vid)
        if v is None:
            raise NotFound(kind="vvol", ref=vid)
        return v

    def _allocate(
        self, conn: Connection, pe: Pe, v: Vvol, h: Host, shared: bool, op: str, refcount: int
    ) -> Binding:
        tid = None
        if pe.protocol == "iscsi":
            if not shared and not h.iqn:
                raise InvalidInput(
                    detail=f"host {h.name} has no iSCSI initiator name "
                    f"(vvhost host add {h.name} --iqn IQN)"
                )
            owner = "*" if shared else h.name
            found = bindrepo.target_for(conn, pe.id, owner)
            if found is None:
                suffix = "shared" if shared else h.name.lower()
                tid = bindrepo.add_target(
                    conn, pe.id, owner, f"{pe.config['iqn_prefix']}:{pe.name.lower()}.{suffix}"
                )
            else:
                tid = found[0]
            used = {int(s) for s in bindrepo.used_secondaries(conn, pe.id, tid)}
            free = [n for n in range(1, MAX_LUN + 1) if n not in used]
            if not free:
                raise InUse(kind="iSCSI target", ref=owner, reason=f"all {MAX_LUN} LUNs are taken")
            secondary = str(free[0])
        elif pe.protocol == "nbd":
            secondary = f"vv-{v.id}.{h.name}"
        else:
            secondary = f"{v.id}.{h.name}"
        return Binding(
            vvol=v.id,
            host=h.name,
            pe=pe.id,
            secondary_id=secondary,
            tid=tid,
            readonly=v.readonly,
            shared=shared,
            refcount=refcount,
            state=ATTACHING,
            op=op,
            created=time.time(),
        )

    def _attach_all(
        self, new: list[tuple[int, Binding]], refs: list[str], results: list[dict[str, Any] | None]
    ) -> list[Binding]:
        failed: list[Binding] = []
        by_pe: dict[str, list[tuple[int, Binding]]] = defaultdict(list)
        for i, b in new:
            by_pe[b.pe].append((i, b))
        for pe_id, items in by_pe.items():
            with self.ctx.db.tx() as conn:
                pe = self.pes.get(conn, pe_id)
                atts = [attachment(conn, self.ctx, b) for _i, b in items]
            ep = self.manager.get(pe)
            with self.manager.lock([pe_id]):
                for (i, b), a in zip(items, atts, strict=True):
                    try:
                        ep.attach(a)
                    except VvhostError as exc:
                        results[i] = _error(refs[i], exc)
                        failed.append(b)
        return failed

    # -- unbind ---------------------------------------------------------------------------
    def unbind(self, refs: list[str], host: str, drop_all: bool = False) -> list[dict[str, Any]]:
        if not refs or len(refs) > MAX_BATCH:
            raise InvalidInput(detail=f"unbind takes 1 to {MAX_BATCH} vvols")
        op = self.ctx.new_op()
        results: list[dict[str, Any] | None] = [None] * len(refs)
        with self.ctx.db.tx() as conn:
            self.hosts.get(conn, host)
            ids = self._resolve(conn, refs, results)
        drops: list[tuple[int, Binding]] = []
        with self.ctx.locks.hold(ids.values()):
            with self.ctx.db.tx() as conn:
                for i, vid in ids.items():
                    b = bindrepo.get_binding(conn, vid, host)
                    if b is None:
                        results[i] = _error(
                            refs[i], NotFound(kind="binding", ref=f"{refs[i]} on {host}")
                        )
                    elif drop_all or b.refcount <= 1:
                        bindrepo.set_binding(conn, b, state=DETACHING, op=op)
                        drops.append((i, b))
                    else:
                        bindrepo.set_binding(conn, b, refcount=b.refcount - 1)
                        results[i] = {"vvol": refs[i], "ok": True, "refcount": b.refcount - 1}
                if drops:
                    self.ctx.journal(conn, op, "unbind", None, {"host": host})
            gone = self._detach_all(drops, refs, results)
            with self.ctx.db.tx() as conn:
                for i, b in drops:
                    if b in gone:
                        bindrepo.delete_binding(conn, b)
                        results[i] = {"vvol": refs[i], "ok": True, "refcount": 0}
                    else:
                        bindrepo.set_binding(conn, b, state=ACTIVE, op=None)
                if drops:
                    repo.journal_remove(conn, op)
        return [r for r in results if r is not None]

    def _detach_all(
        self,
        drops: list[tuple[int, Binding]],
        refs: list[str],
        results: list[dict[str, Any] | None],
    ) -> list[Binding]:
        gone: list[Binding] = []
        for i, b in drops:
            with self.ctx.db.tx() as conn:
                pe = self.pes.get(conn, b.pe)
                key = attachment(conn, self.ctx, b).key
            with self.manager.lock([pe.id]):
                try:
                    self.manager.get(pe).detach(key)
                    gone.append(b)
                except VvhostError as exc:
                    results[i] = _error(refs[i], exc)
        return gone

    # -- rebind ---------------------------------------------------------------------------
    def rebind(self, ref: str, host: str, pe: str) -> dict[str, Any]:
        op = self.ctx.new_op()
        with self.ctx.db.tx() as conn:
            vid = self.ctx.vvol(conn, ref).id
        with self.ctx.locks.hold([vid]):
            with self.ctx.db.tx() as conn:
                old = bindrepo.get_binding(conn, vid, host)
                if old is None:
                    raise NotFound(kind="binding", ref=f"{ref} on {host}")
                target = self.pes.get(conn, pe)
                if target.id == old.pe:
                    return self.handle(conn, old)
                v = self.ctx.ready(self._vvol(conn, vid))
                new = self._allocate(
                    conn,
                    target,
                    v,
                    self.hosts.get(conn, host),
                    old.shared,
                    op,
                    refcount=old.refcount,
                )
                bindrepo.insert_binding(conn, new)
                self.ctx.journal(conn, op, "rebind", vid, {"host": host})
                att = attachment(conn, self.ctx, new)
            try:
                with self.manager.lock([target.id]):
                    self.manager.get(target).attach(att)  # the new path exists first...
            except BaseException:
                with self.manager.lock([target.id]):
                    # if this fails too, reconciliation at the next start removes it
                    with contextlib.suppress(VvhostError):
                        self.manager.get(target).detach(att.key)
                settle(
                    self.ctx,
                    JournalEntry(id=op, op="rebind", vvol=vid, step="begin", args={}, created=0),
                )
                raise
            self.ctx.fault("rebind", "attached")
            with self.ctx.db.tx() as conn:
                bindrepo.set_binding(conn, old, state=DETACHING, op=op)
                bindrepo.set_binding(conn, new, state=ACTIVE, op=None)
                repo.journal_step(conn, op, "committed")
                old_pe = self.pes.get(conn, old.pe)
                old_key = attachment(conn, self.ctx, old).key
            with self.manager.lock([old_pe.id]):
                self.manager.get(old_pe).detach(old_key)  # ...then the old one goes
            with self.ctx.db.tx() as conn:
                bindrepo.delete_binding(conn, old)
                repo.journal_remove(conn, op)
                fresh = bindrepo.get_binding(conn, vid, host)
                assert fresh is not None
                return self.handle(conn, fresh)

    # -- reading --------------------------------------------------------------------------
    def handle(self, conn: Connection, b: Binding) -> dict[str, Any]:
        pe = self.pes.get(conn, b.pe)
        att = attachment(conn, self.ctx, b)
        return {
            "vvol": b.vvol,
            "host": b.host,
            "pe": pe.name,
            "protocol": pe.protocol,
            "secondary_id": b.secondary_id,
            "refcount": b.refcount,
            "readonly": b.readonly,
            "shared": b.shared,
            **self.manager.get(pe).handle(att),
        }

    def listing(self, host: str | None = None, vvol: str | None = None) -> list[dict[str, Any]]:
        with self.ctx.db.tx() as conn:
            vid = self.ctx.vvol(conn, vvol).id if vvol else None
            rows = bindrepo.find_bindings(conn, host=host, vvol=vid)
            out = []
            for b in rows:
                item = self.handle(conn, b)
                item["state"] = b.state
                out.append(item)
            return out


def _auto_pe(pes: list[Pe], v: Vvol) -> Pe:
    for pe in pes:
        if pe.array in (None, v.array):
            return pe
    raise InvalidInput(
        detail="no protocol endpoint reaches this vvol's array; create one with `vvhost pe create`"
    )


def settle(ctx: Context, entry: JournalEntry) -> None:
    """Recovery of bind, unbind and rebind: drop the rows the operation left in a
    transient state; endpoint reconciliation then fixes the daemons."""
    with ctx.db.tx() as conn:
        for b in bindrepo.bindings_of_op(conn, entry.id):
            if b.state in (ATTACHING, DETACHING):
                bindrepo.delete_binding(conn, b)
            else:
                bindrepo.set_binding(conn, b, op=None)
        repo.journal_remove(conn, entry.id)
