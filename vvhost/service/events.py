"""The event log: what happened, for operators and tenants.

    emit(kind, message, severity, subject, fields, tenant)
         │  one row, committed at once (or inside the caller's transaction: emit_in)
         ▼
    events table ──▶ read(caller, after=cursor, since=T, wait=S)
                       admins: every event; a host: its tenant's only
                       wait: poll until something newer than the cursor arrives

Kinds emitted today: ``op.finished`` / ``op.failed`` (catalog, where the journal
entry goes), ``endpoint.restarted`` / ``endpoint.restart-failed`` (endpoint
supervision), ``audit.finding`` / ``audit.resolved`` / ``audit.fixed`` (the
reconciler), ``lease.taken-over`` (a VM lease taken from a dead or silent host).
Retention keeps the newest ``keep`` events and none older than ``days``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from ..catalog import eventrepo
from ..catalog.db import Database
from ..catalog.eventrepo import SEVERITIES, Event
from ..errors import InvalidInput
from ..model import Principal

MAX_WAIT = 60.0  # seconds a long poll may hold a request
MAX_LIMIT = 10000


@dataclass(frozen=True)
class Retention:
    keep: int = 100_000  # newest events kept
    days: float = 30.0  # none older than this


class EventLog:
    def __init__(self, db: Database, retention: Retention | None = None) -> None:
        self.db = db
        self.retention = retention or Retention()
        self._new = threading.Condition()

    def emit(
        self,
        kind: str,
        message: str,
        *,
        severity: str = "info",
        subject: str = "",
        fields: dict[str, Any] | None = None,
        tenant: str | None = None,
    ) -> int:
        """Record one event now, in its own transaction; returns its id (the cursor)."""
        with self.db.tx() as conn:
            event_id = self.emit_in(
                conn,
                kind,
                message,
                severity=severity,
                subject=subject,
                fields=fields,
                tenant=tenant,
            )
        self.wake()
        return event_id

    @staticmethod
    def emit_in(
        conn: Connection,
        kind: str,
        message: str,
        *,
        severity: str = "info",
        subject: str = "",
        fields: dict[str, Any] | None = None,
        tenant: str | None = None,
    ) -> int:
        """Record one event inside the caller's transaction (it lands with the change)."""
        if severity not in SEVERITIES:
            raise InvalidInput(detail=f"event severity {severity!r} is not one of {SEVERITIES}")
        ev = Event(
            kind=kind,
            message=message,
            severity=severity,
            subject=subject,
            fields=dict(fields or {}),
            tenant=tenant,
        )
        return eventrepo.insert(conn, ev)

    def wake(self) -> None:
        with self._new:
            self._new.notify_all()

    def read(
        self,
        caller: Principal,
        *,
        after: int = 0,
        since: float | None = None,
        limit: int = 1000,
        wait: float = 0.0,
    ) -> dict[str, Any]:
        """Events ``caller`` may see after cursor ``after`` (and from time ``since``);
        with ``wait`` > 0 and none yet, wait up to that long for one.  Returns the
        events and the cursor to pass next time (the last id looked at, so events
        of other tenants are skipped for good, never re-read)."""
        if after < 0 or not 0 < limit <= MAX_LIMIT:
            raise InvalidInput(detail=f"cursor must be >= 0 and limit 1..{MAX_LIMIT}")
        if not 0 <= wait <= MAX_WAIT:
            raise InvalidInput(detail=f"wait must be 0..{MAX_WAIT:g} seconds")
        deadline = time.monotonic() + wait
        while True:
            with self.db.tx() as conn:
                found = eventrepo.query(
                    conn,
                    after=after,
                    since=since,
                    tenant=caller.tenant,
                    admin=caller.is_admin,
                    limit=limit,
                )
                last = eventrepo.last_id(conn)
            left = deadline - time.monotonic()
            if found or left <= 0:
                break
            with self._new:  # woken by emit in this process; polls for other writers
                self._new.wait(min(left, 0.5))
        cursor = found[-1].id if len(found) == limit else max(after, last)
        return {"events": [e.to_dict() for e in found], "cursor": cursor}

    def prune(self, now: float | None = None) -> int:
        """Apply retention; returns how many events went."""
        now = time.time() if now is None else now
        with self.db.tx() as conn:
            return eventrepo.prune(conn, self.retention.keep, now - self.retention.days * 86400.0)


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """``--since``: seconds since the epoch, or an age like ``90s``, ``15m``, ``2h``, ``7d``."""
    if text is None or text == "":
        return None
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return now - float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise InvalidInput(
            detail=f"--since {text!r} is neither epoch seconds nor an age like 15m, 2h, 7d"
        ) from None
