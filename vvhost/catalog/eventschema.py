"""Tables of the event log (migration ``_v9_events``).

events        id (cursor, ascending)  time  kind  severity  subject  message
              fields (JSON)  tenant (NULL: admins only)
event_counts  kind  severity  count          every event ever emitted, by kind:
                                             survives retention (Prometheus counters)
op_stats      op  outcome  count  seconds  buckets (JSON: cumulative counts per
                                             upper bound of OP_BUCKETS)
findings      text  kind  first_seen  last_seen
                                             what the reconciler found last round, so a
                                             finding becomes an event once, not every round
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table, Text

from .schema import metadata

# Upper bounds (seconds) of the operation latency histogram.
OP_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("message", Text, nullable=False),
    Column("fields", Text, nullable=False),
    Column("tenant", String(128)),
    Index("ix_events_time", "time"),
    Index("ix_events_tenant_id", "tenant", "id"),
    Index("ix_events_subject_id", "subject", "id"),
    sqlite_autoincrement=True,  # ids are never reused after retention: cursors stay valid
)

event_counts = Table(
    "event_counts",
    metadata,
    Column("kind", String(64), primary_key=True),
    Column("severity", String(16), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

op_stats = Table(
    "op_stats",
    metadata,
    Column("op", String(32), primary_key=True),
    Column("outcome", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("buckets", Text, nullable=False),
)

findings = Table(
    "findings",
    metadata,
    Column("text", Text, primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

TABLES = [events, event_counts, op_stats, findings]
