"""Queries for control-plane replicas and their leases (PostgreSQL only).

    replicas(id, node, url, started, heartbeat, epoch, lease_until, state)
      live     renews lease_until = now + lease every heartbeat
      fenced   another replica found its lease expired and bumped its epoch;
               the row goes once its operations are finished or rolled back

Every time is the catalog's clock (``clock_timestamp()``), so the replicas'
clocks never matter.  Row locks carry the fencing:

    every transaction of a replica   SELECT ... FOR KEY SHARE of its own row
    heartbeat                        UPDATE (no key change: never waits on the above)
    takeover                         SELECT ... FOR UPDATE, then a new epoch, state fenced

so a takeover waits until every transaction that passed the check has ended,
and no transaction of the fenced replica passes the check afterwards.

Epochs come from one sequence, so none is ever given twice: a replica id that
registers again after its row went cannot meet its earlier, frozen process's epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from ..model import ATTACHING, DETACHING
from .schema import EPOCH_SEQUENCE

NOW = "extract(epoch from clock_timestamp())::float8"
NEXT_EPOCH = f"nextval('{EPOCH_SEQUENCE}')"


@dataclass(frozen=True)
class ReplicaRow:
    id: str
    node: str
    url: str | None
    started: float
    heartbeat: float
    epoch: int
    lease_left: float  # seconds; negative once expired
    state: str


def register(
    conn: Connection, replica: str, node: str, url: str | None, lease: float
) -> int | float:
    """Add this replica (a new epoch, lease from now) and return its epoch (an int).
    A row of the same id left by an earlier process whose lease expired is taken
    over (a new epoch: that process is fenced); while its lease runs, the seconds
    left (a float) are returned instead."""
    values = {"id": replica, "node": node, "url": url, "lease": lease}
    row = conn.execute(
        text(
            "INSERT INTO replicas (id, node, url, started, heartbeat, epoch, lease_until, state) "
            f"VALUES (:id, :node, :url, {NOW}, {NOW}, {NEXT_EPOCH}, {NOW} + :lease, 'live') "
            "ON CONFLICT (id) DO NOTHING RETURNING epoch"
        ),
        values,
    ).first()
    if row is not None:
        return int(row.epoch)
    old = conn.execute(
        text(
            f"SELECT state, lease_until - {NOW} AS left_s FROM replicas WHERE id = :id FOR UPDATE"
        ),
        {"id": replica},
    ).first()
    if old is not None and old.state == "live" and float(old.left_s) > 0:
        return float(old.left_s)
    row = conn.execute(
        text(
            f"UPDATE replicas SET node = :node, url = :url, started = {NOW}, heartbeat = {NOW}, "
            f"epoch = {NEXT_EPOCH}, lease_until = {NOW} + :lease, state = 'live' "
            "WHERE id = :id RETURNING epoch"
        ),
        values,
    ).first()
    return int(row.epoch) if row is not None else 0.0


def renew(conn: Connection, replica: str, epoch: int, lease: float) -> bool:
    """Extend the lease unless another replica fenced this one; False if it did."""
    done = conn.execute(
        text(
            f"UPDATE replicas SET heartbeat = {NOW}, lease_until = {NOW} + :lease "
            "WHERE id = :id AND epoch = :epoch AND state = 'live'"
        ),
        {"id": replica, "epoch": epoch, "lease": lease},
    )
    return bool(done.rowcount)


def hold(conn: Connection, replica: str) -> tuple[int, str, float] | None:
    """(epoch, state, seconds of lease left) of ``replica``, its row share-locked
    until the transaction ends (a takeover waits for it); None if the row is gone."""
    row = conn.execute(
        text(
            f"SELECT epoch, state, lease_until - {NOW} AS left_s FROM replicas "
            "WHERE id = :id FOR KEY SHARE"
        ),
        {"id": replica},
    ).first()
    return (int(row.epoch), str(row.state), float(row.left_s)) if row else None


def listing(conn: Connection) -> list[ReplicaRow]:
    rows = conn.execute(
        text(
            "SELECT id, node, url, started, heartbeat, epoch, state, "
            f"lease_until - {NOW} AS left_s FROM replicas ORDER BY started"
        )
    )
    return [
        ReplicaRow(
            id=r.id,
            node=r.node,
            url=r.url,
            started=r.started,
            heartbeat=r.heartbeat,
            epoch=int(r.epoch),
            lease_left=float(r.left_s),
            state=r.state,
        )
        for r in rows
    ]


def expired(conn: Connection, me: str) -> list[str]:
    """Other replicas whose lease ran out (live) or that were fenced already and
    still have their row (a takeover that did not finish)."""
    rows = conn.execute(
        text(
            "SELECT id FROM replicas WHERE id <> :me "
            f"AND (state <> 'live' OR lease_until < {NOW}) ORDER BY lease_until"
        ),
        {"me": me},
    )
    return [r.id for r in rows]


def end_sessions(conn: Connection, application_name: str) -> int:
    """Terminate every catalog session of a replica (they carry its name), so a
    frozen replica's open transactions and advisory locks end now."""
    rows = conn.execute(
        text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = :app AND pid <> pg_backend_pid()"
        ),
        {"app": application_name},
    ).all()
    return len(rows)


def fence(conn: Connection, replica: str) -> bool:
    """Bump the epoch of ``replica`` if its lease is still expired when its row is
    locked (a late heartbeat wins); True when it is fenced now (or was already)."""
    conn.execute(text("SET LOCAL lock_timeout = '5s'"))
    row = conn.execute(
        text(
            f"SELECT state, lease_until - {NOW} AS left_s FROM replicas WHERE id = :id FOR UPDATE"
        ),
        {"id": replica},
    ).first()
    if row is None:
        return False  # another replica took over and finished already
    if row.state == "live":
        if float(row.left_s) >= 0:
            return False
        conn.execute(
            text(f"UPDATE replicas SET epoch = {NEXT_EPOCH}, state = 'fenced' WHERE id = :id"),
            {"id": replica},
        )
    return True


def claim_journal(conn: Connection, me: str, epoch: int, owners: list[str]) -> list[str]:
    """Make this replica the owner of the journaled operations of ``owners``
    (and of operations nobody owns when ``owners`` holds ""); their ids."""
    if not owners:
        return []
    rows = conn.execute(
        text(
            "UPDATE journal SET owner = :me, owner_epoch = :epoch "
            "WHERE owner = ANY(:owners) OR (owner IS NULL AND '' = ANY(:owners)) RETURNING id"
        ),
        {"me": me, "epoch": epoch, "owners": owners},
    )
    return [r.id for r in rows]


def drop_transient(conn: Connection, owners: list[str]) -> int:
    """Delete the bindings ``owners`` were attaching or detaching (a crash cut
    those batches; "" stands for rows nobody owns); how many."""
    if not owners:
        return 0
    done = conn.execute(
        text(
            "DELETE FROM bindings WHERE state IN (:a, :d) "
            "AND (owner = ANY(:owners) OR (owner IS NULL AND '' = ANY(:owners)))"
        ),
        {"a": ATTACHING, "d": DETACHING, "owners": owners},
    )
    return int(done.rowcount)


def orphan_owners(conn: Connection) -> list[str]:
    """Owners named by the journal or by changing bindings that are not a live
    replica ("" for entries nobody owns, made before replicas existed)."""
    rows = conn.execute(
        text(
            "SELECT DISTINCT coalesce(owner, '') AS o FROM ("
            "  SELECT owner FROM journal UNION ALL"
            "  SELECT owner FROM bindings WHERE state IN (:a, :d)) x "
            "WHERE owner IS NULL OR owner NOT IN (SELECT id FROM replicas WHERE state = 'live')"
        ),
        {"a": ATTACHING, "d": DETACHING},
    )
    return [r.o for r in rows]


def owned(conn: Connection, owner: str) -> int:
    """How many journaled operations name ``owner``."""
    row = conn.execute(
        text("SELECT count(*) AS n FROM journal WHERE owner = :o"), {"o": owner}
    ).first()
    return int(row.n) if row else 0


def forget(conn: Connection, replica: str) -> None:
    conn.execute(text("DELETE FROM replicas WHERE id = :id AND state <> 'live'"), {"id": replica})


def leave(conn: Connection, replica: str) -> None:
    """A replica stopping cleanly: its row goes, unless operations it journaled are
    left (then its lease expires and another replica finishes them)."""
    conn.execute(
        text(
            "DELETE FROM replicas WHERE id = :id "
            "AND NOT EXISTS (SELECT 1 FROM journal WHERE owner = :id)"
        ),
        {"id": replica},
    )
