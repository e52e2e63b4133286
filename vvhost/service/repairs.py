"""``vvhost audit --fix``: repair what is safe to repair, and only what vvhost made.

    stale attachment   an endpoint presents a LUN / export / file entry that no
                       binding row names (any state): detached.  iSCSI LUNs only
                       inside targets the catalog made (pe_targets); a target
                       someone else added to the daemon is left alone.
    orphan volume      an array holds a volume vvhost made (``dir``: a file
                       ``vvols/<uuid>.raw`` under the array's marker; ``rbd``: an
                       entry of vvhost's index in the pool) with no catalog row
                       and no journaled operation naming it, for longer than the
                       grace period (since the reconciler first saw it, or since
                       the file last changed): removed.

Everything else the audit reports (counts, failed vvols, unfinished operations)
needs a person: it is listed under ``left`` with the reason.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select

from ..arrays.sources import FileSource
from ..catalog import bindrepo, repo, vvolrepo
from ..catalog.eventschema import findings
from ..errors import VvhostError
from ..model import Pe
from .context import Context
from .endpoints import EndpointManager, attachment_key

DEFAULT_GRACE = 3600.0  # seconds an orphan must have been one before it is removed


@dataclass(frozen=True)
class Repair:
    subject: str  # "pe:NAME" or "array:NAME"
    what: str  # "endpoint pe1: LUN 1/3" / "array local: /srv/a/vvols/<id>.raw"
    action: str  # "detached", "removed", or "left"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def orphan_text(array_name: str, label: str) -> str:
    """The audit's words for an orphan (also the reconciler's finding key)."""
    return f"array {array_name}: {label} has no catalog row"


def stale_text(pe_name: str, key: str) -> str:
    return f"endpoint {pe_name} presents {key}, which no binding wants"


def fix(ctx: Context, endpoints: EndpointManager, grace: float = DEFAULT_GRACE) -> list[Repair]:
    """Repair stale attachments and old orphans; returns what was done or left."""
    done: list[Repair] = []
    done += _stale_attachments(ctx, endpoints)
    done += _orphans(ctx, grace, time.time())
    for r in done:
        if r.action != "left":
            ctx.events.emit(
                "audit.fixed",
                f"{r.what}: {r.action}",
                severity="info",
                subject=r.subject,
                fields=r.to_dict(),
            )
    return done


def _stale_attachments(ctx: Context, endpoints: EndpointManager) -> list[Repair]:
    out: list[Repair] = []
    with ctx.db.tx() as conn:
        pes = bindrepo.list_pes(conn)
    for pe in pes:
        with endpoints.lock([pe.id]):  # binds and unbinds of this endpoint wait
            with ctx.db.tx() as conn:
                wanted = {attachment_key(b) for b in bindrepo.find_bindings(conn, pe=pe.id)}
                ours = set(bindrepo.targets(conn, pe.id))
            ep = endpoints.get(pe)
            if not ep.alive():
                continue
            for key in sorted(ep.present() - wanted):
                subject, what = f"pe:{pe.name}", f"endpoint {pe.name}: {key}"
                if not _made_by_us(pe, key, ours):
                    why = "not made by vvhost (a foreign target)"
                    out.append(Repair(subject, what, "left", why))
                    continue
                try:
                    ep.detach(key)
                    out.append(Repair(subject, what, "detached", "no binding wants it"))
                except VvhostError as exc:
                    out.append(Repair(subject, what, "left", f"detaching failed: {exc.message}"))
    return out


def _made_by_us(pe: Pe, key: str, our_tids: set[int]) -> bool:
    if pe.protocol != "iscsi":
        return True  # the endpoint lists only what it made (its own daemon, its own records)
    tid, _, _lun = key.partition("/")
    return tid.isdigit() and int(tid) in our_tids


def _orphans(ctx: Context, grace: float, now: float) -> list[Repair]:
    out: list[Repair] = []
    with ctx.db.tx() as conn:
        arrays = repo.list_arrays(conn)
        named = {v.id for v in vvolrepo.listing(conn)}
        for entry in repo.journal_list(conn):
            named |= {entry.vvol or ""} | set(entry.args.get("members", []))
            named |= {str(x) for x in entry.args.values() if isinstance(x, str)}
        seen = {r.text: r.first_seen for r in conn.execute(select(findings))}
    for arr in arrays:
        arr = ctx.status(arr)
        if arr.state == "offline":
            continue
        backend = ctx.backend(arr.id)
        for vid in sorted(set(backend.list_ids()) - named):
            source = backend.source(vid)
            subject, what = f"array:{arr.name}", f"array {arr.name}: {source.label()}"
            if not _is_vvol_id(vid):
                why = "not named like a vvol: not made by vvhost"
                out.append(Repair(subject, what, "left", why))
                continue
            age = _age(source, seen.get(orphan_text(arr.name, source.label())), now)
            if age < grace:
                why = f"orphan for {age:.0f}s, grace period {grace:.0f}s"
                out.append(Repair(subject, what, "left", why))
                continue
            try:
                backend.remove(vid)
                out.append(Repair(subject, what, "removed", f"orphan for {age:.0f}s"))
            except VvhostError as exc:
                out.append(Repair(subject, what, "left", f"removing failed: {exc.message}"))
    return out


def _is_vvol_id(vid: str) -> bool:
    try:
        return str(uuid.UUID(vid)) == vid
    except ValueError:
        return False


def _age(source: Any, first_seen: float | None, now: float) -> float:
    """How long a volume has been an orphan, as far as can be known."""
    ages = [now - first_seen] if first_seen is not None else [0.0]
    if isinstance(source, FileSource):
        with contextlib.suppress(OSError):
            ages.append(now - os.stat(source.path).st_mtime)
    return max(ages)
