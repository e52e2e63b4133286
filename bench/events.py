"""Event log scale: ``events --since`` for the last 10 events over the unix socket,
with 10,000 events in the catalog against with 100.

One server.  A few real operations (vvol create and delete) leave their events;
then the log is filled in batches straight into the catalog the server uses
(SQLite in WAL mode takes a second writer), each event one millisecond after the
previous one, so "the last 10" is a time the query names exactly.  Each side is
the median of CALLS calls after WARMUP, every call checked to return exactly the
10 newest events.
"""

from __future__ import annotations

import os
import time
from functools import partial

from vvhost.catalog import eventrepo
from vvhost.catalog.db import Database, sqlite_url
from vvhost.client import Client

from .common import Result, check, median, private_dir, server, timed

SMALL = 100
BIG = 10_000
LAST = 10
CALLS = 200
WARMUP = 20
BATCH = 1000
TARGET = "ratio <= 1.5"
LIMIT = 1.5


def fill(state_dir: str, upto: int, start: float) -> float:
    """Add filler events until the log holds ``upto``; returns the newest time."""
    db = Database(sqlite_url(os.path.join(state_dir, "catalog.db")))
    try:
        with db.tx() as conn:
            have = eventrepo.count(conn)
            newest = start
        while have < upto:
            with db.tx() as conn:
                for _ in range(min(BATCH, upto - have)):
                    have += 1
                    newest = start + have * 1e-3
                    eventrepo.insert(
                        conn,
                        eventrepo.Event(
                            "bench.filler", f"filler {have}", subject="bench", time=newest
                        ),
                    )
        return newest
    finally:
        db.close()


def measure(c: Client) -> list[float]:
    """Median-able latencies of "events since the 10th newest" (the CLI's call)."""
    newest = int(c.events(since=time.time() + 86400)["cursor"])  # nothing that late: the cursor
    everything = c.events(cursor=newest - LAST - 1)["events"]
    check(len(everything) == LAST + 1, f"expected {LAST + 1} newest events")
    since = everything[1]["time"]  # the 10th newest
    want = [e["id"] for e in everything[1:]]
    out = []
    for i in range(WARMUP + CALLS):
        seconds, got = timed(partial(c.events, since=since))
        check([e["id"] for e in got["events"]] == want, "events --since returned other events")
        if i >= WARMUP:
            out.append(seconds)
    return out


def run(reps: int = 3) -> list[Result]:
    """``reps`` is unused: each side is already the median of CALLS calls."""
    del reps
    notes: list[str] = []
    with private_dir("events") as tmp, server(os.path.join(tmp, "state")) as (proc, c):
        c.container_create("ev", "1G")
        for i in range(5):  # real operations leave real events in the log
            c.vvol_delete(c.vvol_create("ev", "1M", name=f"e{i}")["id"])
        start = time.time()  # fillers come after the real events, a millisecond apart
        fill(proc.state_dir, SMALL, start)
        small = measure(c)
        seconds, _ = timed(lambda: fill(proc.state_dir, BIG, start))
        notes.append(f"events: filled {BIG - SMALL} events in {seconds:.1f} s")
        big = measure(c)
    res = Result(f"events: --since last {LAST} @{BIG} vs @{SMALL}", TARGET, LIMIT)
    res.measured, res.baseline = median(big), median(small)
    res.samples = {f"at_{BIG}": big, f"at_{SMALL}": small}
    res.notes = notes
    return [res.finish()]
