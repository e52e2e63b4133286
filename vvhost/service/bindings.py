"""Binding vvols to hosts through protocol endpoints.

    bind    (vvol, host) -> (PE, secondary id), reference counted per (vvol, host)
    unbind  decrement; at zero (or --all) the LUN / export / file goes
    rebind  new path first (another PE), then the old one is dropped

Rows are keyed (vvol, host, PE) and carry a state: ``attaching`` while the
endpoint is being told, ``active`` once it serves the binding, ``detaching``
while it is being removed.  The row is the operation's intent record: a crash
leaves rows in a transient state, recovery drops them, and endpoint
reconciliation then makes every daemon present exactly the active bindings.
Operations for one host are serialised; a row in a transient state refuses
delete, revert and move of its vvol like an active one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection

from ..catalog import bindrepo, repo
from ..errors import (
    Busy,
    EndpointError,
    Forbidden,
    InUse,
    InvalidInput,
    NodeGone,
    NotFound,
    VvhostError,
)
from ..model import ACTIVE, ATTACHING, DETACHING, Binding, Host, Pe, Vvol
from ..pe import Attachment, secondary_id
from ..pe.iscsi import allocate_lun, target_name
from .context import Context
from .endpoints import EndpointManager, PeOps, attachment, attachment_key
from .hosts import HostOps

MAX_BATCH = 1024


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
        """Bind a batch: one transaction decides every binding (rows in state
        ``attaching``), the endpoints are told, one transaction makes them active."""
        _check_batch(refs, "bind")
        op = self.ctx.new_op()
        results: list[dict[str, Any] | None] = [None] * len(refs)
        plans: list[_Plan] = []
        luns: dict[tuple[str, int], set[int]] = {}
        hints: dict[tuple[str, str], dict[str, str]] = {}
        with self.ctx.locks.hold([f"host:{host}"]):
            with self.ctx.db.tx() as conn:
                h = self.hosts.get(conn, host)
                if h.fenced is not None:  # nothing reaches it until it is unfenced
                    raise Forbidden(detail=f"host {host} is fenced: unfence it first")
                chosen = self.pes.get(conn, pe) if pe else None
                if chosen is not None and self.manager.elsewhere(chosen):
                    self.manager.remote.check_live(conn, chosen)
                every_pe: list[Pe] | None = None
                for i, ref in enumerate(refs):
                    try:
                        v = self.ctx.ready(self.ctx.vvol(conn, ref))
                        source = self.ctx.source(v)  # array online, data there
                        existing = bindrepo.find_bindings(conn, vvol=v.id, host=host)
                        if existing:
                            b = self._reuse(existing[0], chosen, ref)
                            bindrepo.set_binding(conn, b, refcount=b.refcount + 1)
                            b = replace(b, refcount=b.refcount + 1)
                            target = self.pes.get(conn, b.pe)
                        else:
                            if chosen is None and every_pe is None:
                                every_pe = bindrepo.list_pes(conn)
                            target = chosen or _auto_pe(every_pe or [], v)
                            if chosen is None and self.manager.elsewhere(target):
                                self.manager.remote.check_live(conn, target)
                            b = self._allocate(conn, target, v, h, shared, op, 1, luns, hints)
                            bindrepo.insert_binding(conn, b, self.ctx.replica.id)
                        att = attachment(conn, self.ctx, b, v, h, source)
                        plans.append(_Plan(i, b, target, att, new=not existing))
                    except VvhostError as exc:
                        results[i] = _error(ref, exc)
            failed = self._attach_all([p for p in plans if p.new], refs, results)
            self.ctx.fault("bind", "attached")
            with self.ctx.db.tx() as conn:
                for p in plans:
                    if p in failed:
                        bindrepo.delete_binding(conn, p.binding)
                    elif p.new:
                        bindrepo.set_binding(conn, p.binding, state=ACTIVE, op=None)
            self.manager.release_readonly([p.binding.vvol for p in failed if p.binding.readonly])
            failed += self._grant_rbd(
                host, [p for p in plans if p.new and p not in failed], refs, results
            )
        for p in plans:
            if p not in failed:
                bound = replace(p.binding, state=ACTIVE, op=None)
                results[p.index] = {
                    "vvol": refs[p.index],
                    "ok": True,
                    "handle": self._handle(bound, p.pe, p.attachment),
                }
        return [r for r in results if r is not None]

    def _grant_rbd(
        self, host: str, plans: list[_Plan], refs: list[str], results: list[dict[str, Any] | None]
    ) -> list[_Plan]:
        """Give the host's Ceph identity the namespaces its new rbd bindings need; if
        that fails, those bindings are undone (endpoint entry and row) and failed."""
        rbd = [p for p in plans if p.pe.protocol == "rbd"]
        if not rbd:
            return []
        try:
            self.manager.rbd.sync(host)
            return []
        except Exception as exc:  # whatever failed, the new bindings are undone
            err = (
                exc if isinstance(exc, VvhostError) else EndpointError(tool="ceph", detail=str(exc))
            )
        for p in rbd:
            with self.manager.lock([p.pe.id]), contextlib.suppress(VvhostError):
                self.manager.get(p.pe).detach(p.attachment.key)
            results[p.index] = _error(refs[p.index], err)
        with self.ctx.db.tx() as conn:
            for p in rbd:
                bindrepo.delete_binding(conn, p.binding)
        with contextlib.suppress(VvhostError):  # back to what the remaining bindings need
            self.manager.rbd.sync(host)
        return rbd

    def _revoke_rbd(self, host: str, pes: list[Pe]) -> None:
        """After bindings through rbd endpoints went: the identity shrinks (or goes)."""
        if any(pe.protocol == "rbd" for pe in pes):
            self.manager.rbd.sync(host)

    @staticmethod
    def _reuse(b: Binding, chosen: Pe | None, ref: str) -> Binding:
        if b.state != ACTIVE:
            raise Busy(ref=ref, state=f"{b.state} for {b.host}", op=b.op)
        if chosen and b.pe != chosen.id:
            raise InUse(
                kind="vvol",
                ref=ref,
                reason=f"bound for {b.host} through another endpoint; use rebind",
            )
        return b

    def _allocate(
        self,
        conn: Connection,
        pe: Pe,
        v: Vvol,
        h: Host,
        shared: bool,
        op: str,
        refcount: int,
        luns: dict[tuple[str, int], set[int]] | None = None,
        hints: dict[tuple[str, str], dict[str, str]] | None = None,
    ) -> Binding:
        """Decide a new binding's secondary id.  ``luns`` carries the LUNs in use per
        (PE, target) across one batch, so a batch reads them once."""
        check_reach(conn, pe, v, h)
        tid = None
        if pe.protocol == "iscsi":
            tid, secondary = self._allocate_lun(conn, pe, v, h, shared, luns, hints)
        else:
            secondary = secondary_id(pe.protocol, v.id, h.name)
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

    @staticmethod
    def _allocate_lun(
        conn: Connection,
        pe: Pe,
        v: Vvol,
        h: Host,
        shared: bool,
        luns: dict[tuple[str, int], set[int]] | None,
        hints: dict[tuple[str, str], dict[str, str]] | None,
    ) -> tuple[int, str]:
        """The target (made on first use) and LUN of a new iSCSI binding; the
        choice itself is the endpoint's (``pe/iscsi.py``), the catalog records it."""
        if not shared and not h.iqn:
            raise InvalidInput(
                detail=f"host {h.name} has no iSCSI initiator name "
                f"(vvhost host add {h.name} --iqn IQN)"
            )
        owner = "*" if shared else h.name
        bindrepo.lock_pe(conn, pe.id)  # one writer chooses this endpoint's tids and LUNs
        found = bindrepo.target_for(conn, pe.id, owner)
        if found is None:
            iqn = target_name(pe.config["iqn_prefix"], pe.name, None if shared else h.name)
            tid = bindrepo.add_target(conn, pe.id, owner, iqn)
        else:
            tid = found[0]
        luns = {} if luns is None else luns
        hints = {} if hints is None else hints
        if (pe.id, tid) not in luns:
            luns[pe.id, tid] = {int(s) for s in bindrepo.used_secondaries(conn, pe.id, tid)}
        used = luns[pe.id, tid]
        if (pe.id, h.name) not in hints:
            hints[pe.id, h.name] = bindrepo.hints_for(conn, pe.id, h.name)
        known = hints[pe.id, h.name]
        hinted = known.get(v.id)
        kept = {int(s) for vid, s in known.items() if vid != v.id}
        lun = allocate_lun(used, kept, int(hinted) if hinted is not None else None, owner)
        used.add(lun)
        bindrepo.set_hint(conn, v.id, h.name, pe.id, str(lun))
        known[v.id] = str(lun)
        return tid, str(lun)

    def _attach_all(
        self, plans: list[_Plan], refs: list[str], results: list[dict[str, Any] | None]
    ) -> list[_Plan]:
        failed: list[_Plan] = []
        for pe_id in sorted({p.pe.id for p in plans}):
            group = [p for p in plans if p.pe.id == pe_id]
            if self.manager.elsewhere(group[0].pe):
                errors = self._attach_remote(group[0].pe, group)
            else:
                with self.manager.lock([pe_id]):
                    errors = self.manager.get(group[0].pe).attach_many(
                        [p.attachment for p in group]
                    )
            for p in group:
                if p.attachment.key in errors:
                    results[p.index] = _error(refs[p.index], errors[p.attachment.key])
                    failed.append(p)
        return failed

    def _attach_remote(self, pe: Pe, group: list[_Plan]) -> dict[str, VvhostError]:
        """Another node runs ``pe``: the rows become active with a request to that
        node, which makes its daemon present them; on failure or timeout the rows go
        and the node is asked again, so its daemon follows the catalog back."""
        with self.ctx.db.tx() as conn:
            for p in group:
                bindrepo.set_binding(conn, p.binding, state=ACTIVE, op=None)
            generation = self.manager.remote.request(conn, pe)
        try:
            self.manager.remote.wait(pe, generation)
            return {}
        except VvhostError as exc:
            with self.ctx.db.tx() as conn:
                for p in group:
                    bindrepo.delete_binding(conn, p.binding)
                self.manager.remote.request(conn, pe)
            return {p.attachment.key: exc for p in group}

    def _detach_remote(self, drops: list[tuple[int, Binding, Pe]]) -> dict[int, VvhostError]:
        """Rows of other nodes' endpoints are ``detaching`` (not presented): each
        node makes its daemon drop them; index -> error for those that failed."""
        failed: dict[int, VvhostError] = {}
        for pe_id in sorted({pe.id for _i, _b, pe in drops}):
            group = [(i, pe) for i, _b, pe in drops if pe.id == pe_id]
            try:
                self.manager.remote.apply(group[0][1])
            except VvhostError as exc:
                failed.update({i: exc for i, _pe in group})
        return failed

    # -- unbind ---------------------------------------------------------------------------
    def unbind(self, refs: list[str], host: str, drop_all: bool = False) -> list[dict[str, Any]]:
        _check_batch(refs, "unbind")
        op = self.ctx.new_op()
        results: list[dict[str, Any] | None] = [None] * len(refs)
        drops: list[tuple[int, Binding, Pe]] = []
        with self.ctx.locks.hold([f"host:{host}"]):
            with self.ctx.db.tx() as conn:
                self.hosts.get(conn, host)
                for i, ref in enumerate(refs):
                    try:
                        v = self.ctx.vvol(conn, ref)
                        found = bindrepo.find_bindings(conn, vvol=v.id, host=host)
                        if not found:
                            raise NotFound(kind="binding", ref=f"{ref} on {host}")
                        b = self._reuse(found[0], None, ref)
                        if drop_all or b.refcount <= 1:
                            where = self.pes.get(conn, b.pe)
                            if self.manager.elsewhere(where):
                                self.manager.remote.check_live(conn, where)
                            bindrepo.set_binding(
                                conn, b, state=DETACHING, op=op, owner=self.ctx.replica.id
                            )
                            drops.append((i, b, where))
                        else:
                            bindrepo.set_binding(conn, b, refcount=b.refcount - 1)
                            results[i] = {"vvol": ref, "ok": True, "refcount": b.refcount - 1}
                    except VvhostError as exc:
                        results[i] = _error(ref, exc)
            gone = []
            far = self._detach_remote([d for d in drops if self.manager.elsewhere(d[2])])
            for i, b, pe in drops:
                if self.manager.elsewhere(pe):
                    if i in far:
                        results[i] = _error(refs[i], far[i])
                    else:
                        gone.append(b)
                    continue
                with self.manager.lock([pe.id]):
                    try:
                        self.manager.get(pe).detach(attachment_key(b))
                        gone.append(b)
                    except VvhostError as exc:
                        results[i] = _error(refs[i], exc)
            with self.ctx.db.tx() as conn:
                for i, b, _pe in drops:
                    if b in gone:
                        bindrepo.delete_binding(conn, b)
                        results[i] = {"vvol": refs[i], "ok": True, "refcount": 0}
                    else:
                        bindrepo.set_binding(conn, b, state=ACTIVE, op=None)
            for pe in {pe.id: pe for i, _b, pe in drops if i in far}.values():
                self.manager.remote.ask(pe)  # present the restored rows again
            self.manager.release_readonly([b.vvol for b in gone if b.readonly])
            try:
                self._revoke_rbd(host, [pe for _i, b, pe in drops if b in gone])
            except VvhostError as exc:  # the bindings are gone; the access is not yet
                for i, b, _pe in drops:
                    if b in gone:
                        results[i] = _error(refs[i], exc)
        return [r for r in results if r is not None]

    # -- rebind ---------------------------------------------------------------------------
    def rebind(self, ref: str, host: str, pe: str) -> dict[str, Any]:
        """Move a binding to another endpoint: the new path exists before the old goes."""
        op = self.ctx.new_op()
        with self.ctx.locks.hold([f"host:{host}"]):
            with self.ctx.db.tx() as conn:
                v = self.ctx.ready(self.ctx.vvol(conn, ref))
                old = bindrepo.get_binding(conn, v.id, host)
                if old is None:
                    raise NotFound(kind="binding", ref=f"{ref} on {host}")
                old_plan = _Plan(
                    0, old, self.pes.get(conn, old.pe), attachment(conn, self.ctx, old), new=False
                )
                target = self.pes.get(conn, pe)
                if target.id != old.pe:
                    if self.manager.elsewhere(target):
                        self.manager.remote.check_live(conn, target)
                    new = self._allocate(
                        conn,
                        target,
                        v,
                        self.hosts.get(conn, host),
                        old.shared,
                        op,
                        refcount=old.refcount,
                    )
                    bindrepo.insert_binding(conn, new, self.ctx.replica.id)
                    att = attachment(conn, self.ctx, new)
            if target.id == old.pe:  # bound there already (its handle read outside the tx)
                return self._handle(old, old_plan.pe, old_plan.attachment)
            if self.manager.elsewhere(target):
                plan = _Plan(0, new, target, att, new=True)
                failed = self._attach_remote(target, [plan])
                if failed:
                    if new.readonly:
                        self.manager.release_readonly([new.vvol])
                    raise failed[att.key]
            else:
                self._attach_here(target, new, att)
            self.ctx.fault("rebind", "attached")
            with self.ctx.db.tx() as conn:  # the commit point
                bindrepo.set_binding(conn, old, state=DETACHING, op=op, owner=self.ctx.replica.id)
                bindrepo.set_binding(conn, new, state=ACTIVE, op=None)
            if self.manager.elsewhere(old_plan.pe):  # its node drops it (unless gone)
                with contextlib.suppress(NodeGone):
                    self.manager.remote.apply(old_plan.pe)
            elif self.manager.owns(old_plan.pe):  # (a file PE of another node: its own)
                with self.manager.lock([old_plan.pe.id]):
                    self.manager.get(old_plan.pe).detach(old_plan.attachment.key)  # ...the old
            with self.ctx.db.tx() as conn:
                bindrepo.delete_binding(conn, old)
            if old.readonly:
                self.manager.release_readonly([old.vvol])
            self._revoke_rbd(host, [old_plan.pe, target])
        return self._handle(replace(new, state=ACTIVE, op=None), target, att)

    def _attach_here(self, target: Pe, new: Binding, att: Attachment) -> None:
        """Rebind's new path through an endpoint this replica runs; on failure the
        row goes (and the read-only flag, if nothing else presents the data)."""
        try:
            with self.manager.lock([target.id]):
                self.manager.get(target).attach(att)  # the new path exists first...
        except BaseException:
            with self.manager.lock([target.id]):
                # if this fails too, reconciliation at the next start removes it
                with contextlib.suppress(VvhostError):
                    self.manager.get(target).detach(att.key)
            with self.ctx.db.tx() as conn:
                bindrepo.delete_binding(conn, new)
            if new.readonly:
                self.manager.release_readonly([new.vvol])
            raise

    # -- reading --------------------------------------------------------------------------
    def _handle(self, b: Binding, pe: Pe, att: Attachment) -> dict[str, Any]:
        return {
            "vvol": b.vvol,
            "host": b.host,
            "pe": pe.name,
            "protocol": pe.protocol,
            "secondary_id": b.secondary_id,
            "refcount": b.refcount,
            "readonly": b.readonly,
            "shared": b.shared,
            "state": b.state,
            **self.manager.presenter(pe).handle(att),
        }

    def listing(
        self,
        host: str | None = None,
        vvol: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Handles of the bindings; with ``limit``, one page of them in (vvol, host)
        order after the key ``after`` (only that page's handles are worked out)."""
        with self.ctx.db.tx() as conn:
            vid = self.ctx.vvol(conn, vvol).id if vvol else None
            rows = (
                bindrepo.find_bindings(conn, host=host, vvol=vid)
                if limit is None
                else bindrepo.page_bindings(conn, host=host, vvol=vid, after=after, limit=limit)
            )
            found = [(b, self.pes.get(conn, b.pe), attachment(conn, self.ctx, b)) for b in rows]
        # handles after the transaction: a TCP NBD endpoint reads its ports and its
        # hosts' identities from the catalog
        return [self._handle(b, pe, att) for b, pe, att in found]


@dataclass(frozen=True, eq=False)
class _Plan:
    """One vvol of a batch: its binding row, endpoint and what the endpoint presents."""

    index: int
    binding: Binding
    pe: Pe
    attachment: Attachment
    new: bool


def _check_batch(refs: list[str], what: str) -> None:
    if not refs or len(refs) > MAX_BATCH:
        raise InvalidInput(detail=f"{what} takes 1 to {MAX_BATCH} vvols")


def check_reach(conn: Connection, pe: Pe, v: Vvol, h: Host) -> None:
    """An endpoint made for one array serves that array's vvols only; an rbd
    endpoint hands a host a Ceph identity, so only its own tenant's vvols."""
    if pe.array is not None and pe.array != v.array:
        mine, theirs = repo.get_array(conn, pe.array), repo.get_array(conn, v.array)
        raise InvalidInput(
            detail=f"endpoint {pe.name} serves array {mine.name if mine else pe.array} only; "
            f"vvol {v.name or v.id} is on array {theirs.name if theirs else v.array}"
        )
    if pe.protocol == "rbd" and h.tenant is not None and v.tenant != h.tenant:
        raise InvalidInput(
            detail=f"host {h.name} belongs to tenant {h.tenant}; vvol {v.name or v.id} "
            "does not, so no rbd binding gives it access"
        )


def _auto_pe(pes: list[Pe], v: Vvol) -> Pe:
    for pe in pes:
        if pe.array in (None, v.array):
            return pe
    raise InvalidInput(
        detail="no protocol endpoint reaches this vvol's array; create one with `vvhost pe create`"
    )


def settle_transient(ctx: Context) -> int:
    """At start: a binding still ``attaching`` or ``detaching`` belongs to an operation
    the crash interrupted; drop the row (rebind: the side that did not commit).
    Endpoint reconciliation then makes every daemon present exactly what remains."""
    with ctx.db.tx() as conn:
        stale = [b for b in bindrepo.find_bindings(conn) if b.state in (ATTACHING, DETACHING)]
        for b in stale:
            bindrepo.delete_binding(conn, b)
    return len(stale)
