"""Crash recovery and the consistency audit.

On start, every journal entry left behind is an operation that did not finish.
Before its commit point it is rolled back; after it, rolled forward.  The audit
then checks that catalog and arrays agree: no file without a row, no row
without a file, reference counts and provisioned bytes equal to what the rows say.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from ..catalog import bindrepo, repo, vvolrepo
from ..errors import ArrayOffline, Conflict
from ..model import ACTIVE, DEFERRED, FAILED, FENCED, READY, JournalEntry
from .bindings import settle_transient
from .context import Context
from .cow import finish_revert, undo_revert
from .data import finish_copy_diffs, finish_move, finish_relocate, undo_move
from .endpoints import EndpointManager, attachment_key
from .pe_audit import audit_acls
from .vvols import finish_delete, finish_extend, undo_new

Handler = Callable[[Context, JournalEntry], Any]

# op -> (handler before the commit point, handler after it)
HANDLERS: dict[str, tuple[Handler, Handler]] = {
    "create": (undo_new, undo_new),
    "snapshot": (undo_new, undo_new),
    "clone": (undo_new, undo_new),
    "delete": (finish_delete, finish_delete),
    "extend": (finish_extend, finish_extend),
    "revert": (undo_revert, finish_revert),
    "move": (undo_move, finish_move),
    "relocate": (finish_relocate, finish_relocate),
    "copy-diffs": (finish_copy_diffs, finish_copy_diffs),
}


# handlers that undo (the rest finish the operation)
ROLLBACKS: set[Handler] = {undo_new, undo_revert, undo_move}


def recover(ctx: Context, only: Collection[str] | None = None) -> list[dict[str, str]]:
    """Finish or undo every interrupted operation (with ``only``: those operation
    ids, which a replica took over; the caller settles their bindings); returns
    what was done.

    A handler that cannot run never stops the daemon: on an offline array the
    operation stays journaled for the next start (``deferred``); any other
    failure marks its vvols ``failed`` with the reason (``vvol show``, ``audit``).
    """
    done = []
    with ctx.db.tx() as conn:
        entries = repo.journal_list(conn)
    if only is not None:
        entries = [e for e in entries if e.id in set(only)]
    for entry in entries:
        if entry.op not in HANDLERS:  # finished by its own service once endpoints run
            continue  # (host fencing: fencing.py)
        before, after = HANDLERS[entry.op]
        handler = after if entry.step == "committed" else before
        undoing = handler in ROLLBACKS
        try:
            _run(handler, ctx, entry)
            action = "rolled back" if undoing else "rolled forward"
        except ArrayOffline as exc:
            action = f"deferred: {exc}"
        except Exception as exc:  # noqa: BLE001 - recovery must go on
            verb = "rolled back" if undoing else "finished"
            reason = f"{entry.op} {entry.id} could not be {verb}: {exc}"
            with ctx.db.tx() as conn:
                still = any(e.id == entry.id for e in repo.journal_list(conn))
            if still:
                ctx.fail(entry.id, _vvols_of(entry), reason)
            action = f"failed: {exc}"
        done.append({"op": entry.op, "id": entry.id, "vvol": entry.vvol or "", "action": action})
    if only is not None:
        return done
    dropped = settle_transient(ctx)
    if dropped:
        done.append(
            {"op": "bindings", "id": "", "vvol": "", "action": f"dropped {dropped} unfinished"}
        )
    return done


def _run(handler: Any, ctx: Context, entry: JournalEntry, attempts: int = 4) -> None:
    """A handler runs again when the catalog ended one of its transactions for
    another that ran at the same time (PostgreSQL deadlock or serialization
    failure): handlers can run again, as after a crash during recovery."""
    for attempt in range(attempts):
        try:
            handler(ctx, entry)
            return
        except Conflict:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _vvols_of(entry: JournalEntry) -> list[str]:
    ids = [entry.vvol] if entry.vvol else []
    return ids + [m for m in entry.args.get("members", []) if m not in ids]


def audit(ctx: Context, endpoints: EndpointManager | None = None) -> dict[str, Any]:
    problems: list[str] = []
    if endpoints is not None:
        problems += _audit_endpoints(ctx, endpoints)
        problems += audit_acls(ctx, endpoints)
    with ctx.db.tx() as conn:
        vvols = vvolrepo.listing(conn, deferred=True)
        containers = repo.list_containers(conn)
        arrays = repo.list_arrays(conn)
        pending = repo.journal_list(conn)
        counted: dict[str, int] = {}
        for v in vvols:
            if v.parent:
                counted[v.parent] = counted.get(v.parent, 0) + 1
        provisioned = {c.id: repo.recount_provisioned(conn, c.id) for c in containers}
    for entry in pending:
        problems.append(f"operation {entry.op} {entry.id} is unfinished at step {entry.step}")
    by_array: dict[str, set[str]] = {a.id: set() for a in arrays}
    for v in vvols:
        by_array.setdefault(v.array, set()).add(v.id)
        if v.state == FAILED:
            problems.append(f"vvol {v.id} is failed: {v.failure}")
        elif v.state == DEFERRED:
            if not counted.get(v.id, 0):
                problems.append(
                    f"vvol {v.id} was deleted (deferred) and nothing needs it any more, "
                    "but its space was not freed"
                )
        elif v.state != READY:
            problems.append(f"vvol {v.id} is {v.state}")
        if v.refs != counted.get(v.id, 0):
            problems.append(
                f"vvol {v.id} refs={v.refs} but {counted.get(v.id, 0)} vvols depend on it"
            )
        if v.parent and v.parent not in {x.id for x in vvols}:
            problems.append(f"vvol {v.id} has a missing parent {v.parent}")
    for c in containers:
        if c.provisioned != provisioned[c.id]:
            problems.append(
                f"container {c.name} provisioned={c.provisioned} but its vvols "
                f"add up to {provisioned[c.id]}"
            )
    for a in arrays:
        a = ctx.status(a)
        if a.state != "online":
            problems.append(f"array {a.name} is {a.state}: {a.reason}")
        if a.state == "offline":
            continue  # its files cannot be looked at until it is back
        backend = ctx.backend(a.id)
        present = set(backend.list_ids())
        for orphan in sorted(present - by_array[a.id]):
            where = backend.source(orphan).label()
            problems.append(f"array {a.name}: {where} has no catalog row")
        for missing in sorted(by_array[a.id] - present):
            problems.append(f"array {a.name}: vvol {missing} has no data")
        for vid in backend.partials():
            problems.append(f"array {a.name}: half-written copy of {vid}")
        problems += [f"array {a.name}: {p}" for p in backend.audit()]
    return {
        "ok": not problems,
        "problems": problems,
        "vvols": len(vvols),
        "containers": len(containers),
        "arrays": len(arrays),
    }


def _audit_endpoints(ctx: Context, endpoints: EndpointManager) -> list[str]:
    """Every active binding is presented by its endpoint, and nothing else is (a
    fenced host's bindings are not)."""
    problems = []
    with ctx.db.tx() as conn:
        pes = bindrepo.list_pes(conn)
        rows = bindrepo.find_bindings(conn)
        wanted: dict[str, set[str]] = {pe.id: set() for pe in pes}
        for b in rows:
            if b.state == FENCED:  # kept until unfence; nothing may present it
                host = bindrepo.get_host(conn, b.host)
                if host is None or host.fenced is None:
                    problems.append(f"binding of {b.vvol} for {b.host} is fenced, its host not")
            elif b.state != ACTIVE:
                problems.append(f"binding of {b.vvol} for {b.host} is {b.state}")
            elif vvolrepo.get(conn, b.vvol) is None:
                problems.append(f"binding for {b.host} names a missing vvol {b.vvol}")
            else:
                wanted.setdefault(b.pe, set()).add(attachment_key(b))
    for pe in pes:
        if not endpoints.owns(pe):
            continue  # the replica on its node audits it
        ep = endpoints.get(pe)
        if not ep.alive():
            problems.append(f"endpoint {pe.name} is not running")
            continue
        present = ep.present()
        for key in sorted(present - wanted[pe.id]):
            problems.append(f"endpoint {pe.name} presents {key}, which no binding wants")
        for key in sorted(wanted[pe.id] - present):
            problems.append(f"endpoint {pe.name} lacks {key} of an active binding")
    return problems
