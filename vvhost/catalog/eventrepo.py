"""Queries of the event log (tables in eventschema.py).

Reading resumes from a cursor: the id of the last event seen.  Ids only grow
(``AUTOINCREMENT``), so ``id > cursor`` never misses one committed before the
query and never repeats one; ``time >= since`` serves ``events --since T``.
Both are index lookups, so a query for the last few events costs the same at
100 events as at 100,000.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, delete, func, or_, select, update

from .db import insert_ignore
from .eventschema import OP_BUCKETS, event_counts, events, findings, op_stats
from .schema import hosts, journal, op_owners, vvols

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class Event:
    """One thing that happened.  ``subject`` names what it is about
    (``vvol:ID``, ``host:NAME``, ``pe:NAME``, ``array:NAME``, ``container:NAME``,
    ``op:ID``); ``tenant`` is whose it is (None: only admins see it)."""

    kind: str
    message: str
    severity: str = "info"
    subject: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    tenant: str | None = None
    time: float = 0.0
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def insert(conn: Connection, ev: Event) -> int:
    """Store ``ev`` (its id and, when 0, its time are assigned); returns the id."""
    result = conn.execute(
        events.insert().values(
            time=ev.time or time.time(),
            kind=ev.kind,
            severity=ev.severity,
            subject=ev.subject,
            message=ev.message,
            fields=json.dumps(ev.fields, sort_keys=True, default=str),
            tenant=ev.tenant,
        )
    )
    _bump(conn, ev.kind, ev.severity)
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def _bump(conn: Connection, kind: str, severity: str) -> None:
    where = and_(event_counts.c.kind == kind, event_counts.c.severity == severity)
    bump = update(event_counts).where(where).values(count=event_counts.c["count"] + 1)
    if conn.execute(bump).rowcount == 0 and not insert_ignore(
        conn, event_counts, kind=kind, severity=severity, count=1
    ):
        conn.execute(bump)  # another writer made the row first


def query(
    conn: Connection,
    *,
    after: int = 0,
    since: float | None = None,
    tenant: str | None = None,
    admin: bool = True,
    limit: int = 1000,
) -> list[Event]:
    """Events with id > ``after`` (and time >= ``since``), oldest first; without
    ``admin`` only those of ``tenant`` (a caller in no tenant sees none)."""
    q = select(events).where(events.c.id > after)
    if since is not None:
        q = q.where(events.c.id >= _first_at(conn, since))
    if not admin:
        if tenant is None:
            return []
        q = q.where(events.c.tenant == tenant)
    rows = conn.execute(q.order_by(events.c.id).limit(limit))
    return [_event(r) for r in rows]


def _first_at(conn: Connection, since: float) -> int:
    """The id of the first event at or after ``since`` (ids and times grow together,
    so the time index finds the cursor and the id index does the rest)."""
    q = select(events.c.id).where(events.c.time >= since).order_by(events.c.time).limit(1)
    row = conn.execute(q).first()  # walks the time index, never the whole table
    return int(row[0]) if row is not None else _last_id(conn) + 1


def _last_id(conn: Connection) -> int:
    row = conn.execute(select(func.max(events.c.id))).first()
    return int(row[0]) if row and row[0] is not None else 0


def last_id(conn: Connection) -> int:
    return _last_id(conn)


def latest(conn: Connection, subject: str) -> Event | None:
    """The newest event about ``subject`` (an index lookup)."""
    q = select(events).where(events.c.subject == subject).order_by(events.c.id.desc()).limit(1)
    row = conn.execute(q).first()
    return _event(row) if row is not None else None


def _event(r: Any) -> Event:
    return Event(
        id=r.id,
        time=r.time,
        kind=r.kind,
        severity=r.severity,
        subject=r.subject,
        message=r.message,
        fields=json.loads(r.fields),
        tenant=r.tenant,
    )


def prune(conn: Connection, keep: int, before: float) -> int:
    """Drop events older than ``before`` and all but the newest ``keep``; returns how many."""
    cut = _last_id(conn) - keep
    gone = conn.execute(delete(events).where(or_(events.c.id <= cut, events.c.time < before)))
    return int(gone.rowcount or 0)


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


def counts(conn: Connection) -> list[tuple[str, str, int]]:
    rows = conn.execute(select(event_counts).order_by(event_counts.c.kind))
    return [(r.kind, r.severity, int(r._mapping["count"])) for r in rows]


# -- operations ------------------------------------------------------------------------
def op_started(conn: Connection, op_id: str, vvol_id: str | None) -> None:
    """Remember whose operation ``op_id`` is (its vvol's tenant) while the vvol is
    there to ask: by the time a delete ends, its row is gone."""
    if not vvol_id:
        return
    owner = conn.execute(select(vvols.c.tenant).where(vvols.c.id == vvol_id)).first()
    if owner is not None and owner[0] is not None:
        conn.execute(update(journal).where(journal.c.id == op_id).values(tenant=owner[0]))


def op_ended(conn: Connection, op_id: str, outcome: str, error: str | None = None) -> None:
    """Record that journaled operation ``op_id`` ended (call before its journal
    row goes, in the same transaction): an event saying who ran what on which
    vvol, how it ended and how long it took, and the running totals for metrics."""
    # the entry, its owner and its vvol in one query (one round trip on a networked catalog)
    q = (
        select(
            journal,
            op_owners.c.kind.label("owner_kind"),
            op_owners.c.subject.label("owner_subject"),
            vvols.c.name.label("vvol_name"),
            vvols.c.tenant.label("vvol_tenant"),
        )
        .outerjoin(op_owners, op_owners.c.op_id == journal.c.id)
        .outerjoin(vvols, vvols.c.id == journal.c.vvol_id)
        .where(journal.c.id == op_id)
    )
    row = conn.execute(q).first()
    if row is None:
        return
    seconds = max(0.0, time.time() - float(row.created)) if row.created else 0.0
    # who: recorded for every operation the API starts under one op id (group
    # snapshots and recovery have none: they are nobody's in particular)
    who = f"{row.owner_kind}:{row.owner_subject}" if row.owner_kind else None
    tenant = row.tenant or row.vvol_tenant or _host_tenant(conn, row.owner_kind, row.owner_subject)
    failed = outcome != "finished"
    words = f"{row.op} of vvol {row.vvol_name or row.vvol_id}" if row.vvol_id else row.op
    message = f"{words} {outcome} after {seconds:.2f}s" + (f" (by {who})" if who else "")
    if error:
        message += f": {error}"
    insert(
        conn,
        Event(
            kind="op.failed" if failed else "op.finished",
            severity="error" if outcome == "failed" else ("warning" if failed else "info"),
            subject=f"vvol:{row.vvol_id}" if row.vvol_id else f"op:{op_id}",
            message=message,
            fields={
                "op": row.op,
                "op_id": op_id,
                "vvol": row.vvol_id,
                "outcome": outcome,
                "seconds": round(seconds, 3),
                "who": who,
                "step": row.step,
                **({"error": error} if error else {}),
            },
            tenant=tenant,
        ),
    )
    _observe(conn, row.op, outcome, seconds)


def note_error(conn: Connection, op_id: str, error: str) -> None:
    """Add why operation ``op_id`` failed to its event (written when it was undone)."""
    rows = conn.execute(
        select(events.c.id, events.c.message, events.c.fields)
        .where(events.c.kind == "op.failed")  # it was written a moment ago: among the last
        .order_by(events.c.id.desc())
        .limit(20)
    )
    for r in rows:
        fields = json.loads(r.fields)
        if fields.get("op_id") == op_id and "error" not in fields:
            fields["error"] = error
            conn.execute(
                update(events)
                .where(events.c.id == r.id)
                .values(message=f"{r.message}: {error}", fields=json.dumps(fields, sort_keys=True))
            )
            return


def _host_tenant(conn: Connection, kind: str | None, subject: str | None) -> str | None:
    """The tenant of the host that started an operation (None for admins and others)."""
    if kind != "host":
        return None
    found = conn.execute(select(hosts.c.tenant).where(hosts.c.name == subject)).first()
    return str(found[0]) if found is not None and found[0] is not None else None


def _observe(conn: Connection, op: str, outcome: str, seconds: float) -> None:
    where = and_(op_stats.c.op == op, op_stats.c.outcome == outcome)
    # the row lock keeps two writers from both adding to the same old buckets
    locked = select(op_stats.c.buckets).where(where).with_for_update()
    row = conn.execute(locked).first()
    if row is None:  # the first of its kind (or another writer makes it right now)
        zero = json.dumps([0] * len(OP_BUCKETS))
        insert_ignore(conn, op_stats, op=op, outcome=outcome, count=0, seconds=0.0, buckets=zero)
        row = conn.execute(locked).one()
    buckets = json.loads(row.buckets)
    for i, bound in enumerate(OP_BUCKETS):
        if seconds <= bound:
            buckets[i] += 1
    conn.execute(
        update(op_stats)
        .where(where)
        .values(
            count=op_stats.c["count"] + 1,
            seconds=op_stats.c.seconds + seconds,
            buckets=json.dumps(buckets),
        )
    )


@dataclass(frozen=True)
class OpStat:
    op: str
    outcome: str
    count: int
    seconds: float
    buckets: list[int]  # cumulative, one per OP_BUCKETS bound


def op_statistics(conn: Connection) -> list[OpStat]:
    rows = conn.execute(select(op_stats).order_by(op_stats.c.op, op_stats.c.outcome))
    return [
        OpStat(r.op, r.outcome, int(r._mapping["count"]), float(r.seconds), json.loads(r.buckets))
        for r in rows
    ]


# -- reconciler findings ---------------------------------------------------------------
def findings_by_kind(conn: Connection) -> list[tuple[str, int]]:
    q = select(findings.c.kind, func.count()).group_by(findings.c.kind)
    return [(str(k), int(n)) for k, n in conn.execute(q)]


def finding_texts(conn: Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute(select(findings.c.text))}


def sync_findings(
    conn: Connection, found: dict[str, str], now: float
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Make the stored findings equal ``found`` (text -> kind); returns the new ones
    and the ones that went away, each as (text, kind)."""
    known = {r.text: r.kind for r in conn.execute(select(findings))}
    new = [(t, k) for t, k in found.items() if t not in known]
    gone = [(t, k) for t, k in known.items() if t not in found]
    for text, kind in new:
        insert_ignore(conn, findings, text=text, kind=kind, first_seen=now, last_seen=now)
    if found:
        conn.execute(update(findings).where(findings.c.text.in_(list(found))).values(last_seen=now))
    for text, _kind in gone:
        conn.execute(delete(findings).where(findings.c.text == text))
    return new, gone
