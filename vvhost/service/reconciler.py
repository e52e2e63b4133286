"""The reconciler: ``vvhost audit`` in the background of ``vvhost serve``.

    every `interval` seconds (one thread; stop() ends it within a second):
      audit()  ──▶ findings now ──▶ seen in the round before too? (a vvol mid-operation
                                      is busy for a moment: only what lasts counts)
                                  ──▶ sync with the findings table
                                      new one    ──▶ event audit.finding / leak.found
                                      gone one   ──▶ event audit.resolved
                                      still there──▶ nothing (no event every round)
      event retention (prune)

A finding is the audit's line; a leak is something held that nothing needs (a
volume without a catalog row, a LUN or export no binding wants, a half-written
copy).  ``vvhost audit --fix`` (repairs.py) repairs the safe ones.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..catalog import eventrepo
from .context import Context
from .endpoints import EndpointManager
from .periodic import Periodic
from .recovery import audit
from .repairs import DEFAULT_GRACE, fix

PRUNE_EVERY = 3600.0  # seconds between retention passes when the audit rounds are off
LEAK_WORDS = ("has no catalog row", "which no binding wants", "half-written copy")


def finding_kind(text: str) -> str:
    return "leak.found" if any(w in text for w in LEAK_WORDS) else "audit.finding"


def subject_of(text: str) -> str:
    """``array NAME: ...`` -> ``array:NAME``; ``vvol ID is ...`` -> ``vvol:ID``."""
    words = text.split(" ", 2)
    if len(words) >= 2 and words[0] in ("array", "vvol", "endpoint", "container", "binding"):
        kind = "pe" if words[0] == "endpoint" else words[0]
        return f"{kind}:{words[1].rstrip(':')}"
    return ""


class Reconciler:
    def __init__(
        self,
        ctx: Context,
        endpoints: EndpointManager,
        interval: float = 300.0,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.ctx = ctx
        self.endpoints = endpoints
        self.interval = interval
        self.grace = grace
        # with the audit turned off (0) only retention runs, hourly, so the event log
        # stays bounded either way
        period = interval if interval > 0 else PRUNE_EVERY
        self._thread = Periodic("reconciler", period, self._tick, join=30.0)
        self._round = threading.Lock()  # a round and a --fix never overlap
        self._seen: set[str] = set()  # found last round, not yet confirmed

    def round(self) -> dict[str, Any]:
        """One pass: audit, turn new findings into events, apply retention."""
        with self._round:
            report = audit(self.ctx, self.endpoints)
            now = set(report["problems"])
            with self.ctx.db.tx() as conn:
                stored = eventrepo.finding_texts(conn)
                lasting = {t: finding_kind(t) for t in now if t in self._seen or t in stored}
                new, gone = eventrepo.sync_findings(conn, lasting, time.time())
                for text, kind in new:
                    self.ctx.events.emit_in(
                        conn,
                        kind,
                        text,
                        severity="warning",
                        subject=subject_of(text),
                        fields={"finding": text},
                    )
                for text, _kind in gone:
                    self.ctx.events.emit_in(
                        conn,
                        "audit.resolved",
                        f"no longer found: {text}",
                        subject=subject_of(text),
                        fields={"finding": text},
                    )
            self._seen = now
            if new or gone:
                self.ctx.events.wake()
            pruned = self.ctx.events.prune()
        return {
            "new": [t for t, _ in new],
            "resolved": [t for t, _ in gone],
            "pruned": pruned,
            "ok": report["ok"],
        }

    def fix(self, grace: float | None = None) -> dict[str, Any]:
        """``audit --fix``: repair what is safe, then audit again."""
        with self._round:
            repairs = fix(self.ctx, self.endpoints, self.grace if grace is None else grace)
        after = self.round()
        report = audit(self.ctx, self.endpoints)
        report["repairs"] = [r.to_dict() for r in repairs]
        report["resolved"] = after["resolved"]
        return report

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _tick(self) -> None:
        if self.interval > 0:
            self.round()
        else:
            self.ctx.events.prune()
