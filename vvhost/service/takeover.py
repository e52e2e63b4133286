"""Finishing what a dead replica left: its journaled operations and bindings.

Every replica looks every HEARTBEAT s for replicas whose lease expired:

    1. end the dead replica's catalog sessions (a frozen one keeps transactions
       and advisory locks open; a killed one has none left); lock its row, still
       expired? -> a new epoch, state fenced (no transaction of it passes the
       lease check any more); then blocklist the Ceph clients it recorded
       (storagefence.py), so it cannot write to an rbd array either
    2. one transaction: claim its journal entries (owner = this replica) and
       drop the bindings it was attaching or detaching
    3. finish or roll back each claimed operation with the crash-recovery
       handlers (recovery.recover: the same code a restart runs)
    4. make every running endpoint present exactly the catalog's bindings
    5. its row goes once no journal entry names it; the event
       ``replica.taken-over`` names the blocklisted client addresses

At start, a replica claims in the same way what no live replica owns (entries
of replicas fenced earlier, or made before replicas existed).  A replica that
dies while taking over leaves the entries in its own name: the next one claims
them from it.  Clients that could not be blocklisted (their cluster was out of
reach) are tried again every ``RETRY_CUT`` seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from ..catalog import bindrepo, replicarepo
from .context import Context
from .endpoints import EndpointManager
from .periodic import Periodic
from .recovery import recover
from .replica import application_name
from .storagefence import Cut, cut

log = logging.getLogger(__name__)

RETRY_CUT = 60.0  # seconds between two tries at clients whose cluster was out of reach


class Takeover:
    def __init__(self, ctx: Context, endpoints: EndpointManager) -> None:
        self.ctx = ctx
        self.endpoints = endpoints
        self.taken: list[dict[str, Any]] = []  # the takeovers this replica did
        self._running = False  # endpoints started: resync them after a takeover
        self._cut_left = False  # clients not blocklisted yet (their cluster out of reach)
        self._cut_at = 0.0
        self._round = Periodic(
            "replica-takeover", ctx.replica.settings.heartbeat, self.tick, join=60.0
        )

    def start(self) -> None:
        """Look for dead replicas from now on (endpoints run by then)."""
        self._running = True
        if self.ctx.replica.active:
            self._round.start()

    def stop(self) -> None:
        self._round.stop()

    def replicas(self) -> list[dict[str, Any]]:
        """Every replica of the catalog (PostgreSQL; empty with SQLite)."""
        if not self.ctx.replica.active:
            return []
        with self.ctx.db.tx() as conn:
            rows = replicarepo.listing(conn)
        return [{**asdict(r), "me": r.id == self.ctx.replica.id} for r in rows]

    def orphans(self) -> list[dict[str, str]]:
        """At start: finish or roll back what no live replica owns."""
        if not self.ctx.replica.active:
            return recover(self.ctx)
        with self.ctx.db.tx() as conn:
            owners = replicarepo.orphan_owners(conn)
        # entries in this replica's own name were left by its earlier process
        return self.take([*owners, self.ctx.replica.id], fence=False)

    def tick(self) -> None:
        replica = self.ctx.replica
        if not replica.active or replica.fenced is not None:
            return
        with self.ctx.db.tx() as conn:
            dead = replicarepo.expired(conn, replica.id)
        for other in dead:
            done = self.take([other], fence=True)
            self.taken.append({"replica": other, "recovered": done})
        if self._cut_left and time.monotonic() - self._cut_at > RETRY_CUT:
            self._cut(None, announce=True)

    def take(self, owners: list[str], fence: bool) -> list[dict[str, str]]:
        """Claim and recover the operations of ``owners`` (fenced first when ``fence``)."""
        me = self.ctx.replica
        if fence:
            with self.ctx.db.engine.begin() as conn:
                for other in owners:
                    replicarepo.end_sessions(conn, application_name(other))
            with self.ctx.db.tx() as conn:
                owners = [o for o in owners if replicarepo.fence(conn, o)]
        # fenced (or gone) in the catalog: no client of theirs gets recorded any more;
        # at start, every client left stale (a cluster out of reach before) is cut too
        cuts = self._cut([o for o in owners if o] if fence else None, announce=not fence)
        with self.ctx.db.tx() as conn:
            ops = replicarepo.claim_journal(conn, me.id, me.epoch, owners)
            dropped = replicarepo.drop_transient(conn, owners)
        done = recover(self.ctx, only=ops) if ops else []
        if dropped:
            done.append(
                {"op": "bindings", "id": "", "vvol": "", "action": f"dropped {dropped} unfinished"}
            )
        if done and self._running:
            self._resync()
        with self.ctx.db.tx() as conn:
            for other in owners:
                if other:
                    replicarepo.forget(conn, other)
        for other in owners:
            if other and fence:
                fenced = cuts.get(other, Cut())
                log.warning("replica %s took over from %s: %s", me.id, other, done)
                self.ctx.events.emit(
                    "replica.taken-over",
                    f"replica {me.id} took over from replica {other}: "
                    f"{len(ops)} operations, {dropped} bindings, {fenced.note()}",
                    severity="warning",
                    subject=other,
                    fields={
                        "by": me.id,
                        "operations": len(ops),
                        "bindings": dropped,
                        "blocklisted": fenced.blocklisted,
                        "not_blocklisted": fenced.failed,
                    },
                )
        return done

    def _cut(self, owners: list[str] | None, announce: bool) -> dict[str, Cut]:
        """Blocklist the stale Ceph clients of ``owners`` (None: of anyone); with
        ``announce``, each replica's cut is an event of its own (a takeover's
        event says it otherwise)."""
        if not self.ctx.replica.active or owners == []:
            return {}
        # a restarted replica's earlier process is stale too, the running one is not
        cuts = cut(self.ctx.db, self.ctx.backend, owners)
        self._cut_at = time.monotonic()
        self._cut_left = any(c.failed for c in cuts.values()) or (
            self._cut_left and owners is not None
        )
        for replica, done in cuts.items():
            if done.blocklisted:
                log.warning("replica %s: blocklisted %s", replica, done.blocklisted)
            if announce and done.blocklisted:
                self.ctx.events.emit(
                    "replica.clients-blocklisted",
                    f"replica {self.ctx.replica.id} cut off stale clients of replica "
                    f"{replica}: {done.note()}",
                    severity="warning",
                    subject=replica,
                    fields={
                        "by": self.ctx.replica.id,
                        "blocklisted": done.blocklisted,
                        "not_blocklisted": done.failed,
                    },
                )
        return cuts

    def _resync(self) -> None:
        with self.ctx.db.tx() as conn:
            pes = bindrepo.list_pes(conn)
        for pe in pes:
            try:
                self.endpoints.resync(pe)
            except Exception:  # noqa: BLE001 - the reconciler tries again later
                log.warning("endpoint %s not resynced after a takeover", pe.name, exc_info=True)
