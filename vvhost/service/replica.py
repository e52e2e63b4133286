"""This control plane as one replica of several sharing a PostgreSQL catalog.

    start     register: row (id, node, url, epoch 1, lease = now + LEASE)
    every HEARTBEAT s   renew the lease (same id, same epoch)
    every transaction   Database.tx() -> check(): own row share-locked, same epoch,
                        still live; a lapsed lease is renewed right there unless
                        another replica fenced it meanwhile
    fenced    (paused or cut off past the lease, another replica took over)
              every transaction from then on raises ReplicaFenced: this process
              writes nothing more and must be restarted (it registers anew)

On SQLite there is one control plane per catalog (the state dir lock): no row,
no lease, no check; operations still record the replica id as their owner.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection

from ..catalog import replicarepo
from ..catalog.db import Database
from ..errors import InvalidInput, ReplicaFenced
from .periodic import Periodic

log = logging.getLogger(__name__)

APP_PREFIX = "vvhost-replica-"


@dataclass(frozen=True)
class ReplicaSettings:
    """Who this replica is and how long its lease lasts."""

    node: str = ""  # "" : the machine's host name
    replica: str = ""  # "" : NODE-<random>, new at every start
    url: str | None = None  # the address it answers on, for ``replica list``
    lease: float = 3.0
    heartbeat: float = 1.0

    def checked(self) -> ReplicaSettings:
        node = self.node or socket.gethostname()
        replica = self.replica or f"{node}-{uuid.uuid4().hex[:8]}"
        for what, value in (("node", node), ("replica", replica)):
            if len(value) > 64 or not value.isprintable() or not value.strip():
                raise InvalidInput(detail=f"{what} name {value!r}: 1-64 printable characters")
        if self.heartbeat <= 0 or self.lease < 2 * self.heartbeat:
            raise InvalidInput(
                detail=f"lease {self.lease:g} s must be at least twice the heartbeat "
                f"{self.heartbeat:g} s (and the heartbeat above 0)"
            )
        return ReplicaSettings(node, replica, self.url, self.lease, self.heartbeat)


def application_name(replica: str) -> str:
    """What this replica's catalog sessions are called (pg_stat_activity)."""
    return (APP_PREFIX + replica)[:63]


class Replica:
    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        self.id = settings.replica
        self.node = settings.node
        self.epoch = 0
        self.fenced: str | None = None  # why this replica may no longer write
        self._guard = threading.Lock()
        self._db: Database | None = None
        self._beat = Periodic("replica-heartbeat", settings.heartbeat, self.beat, join=5.0)

    @property
    def active(self) -> bool:
        """True when leases are kept (PostgreSQL catalog)."""
        return self._db is not None

    def register(self, db: Database) -> None:
        """Join the catalog's replicas (PostgreSQL) and check every transaction from now on."""
        if not db.postgres:
            return
        deadline = time.monotonic() + self.settings.lease + 5
        while True:
            with db.tx() as conn:
                got = replicarepo.register(
                    conn, self.id, self.node, self.settings.url, self.settings.lease
                )
            if isinstance(got, int):
                self.epoch = got
                break
            # an earlier process of this id holds the lease (killed a moment ago, or
            # still running: it is fenced when its lease is taken over)
            if time.monotonic() > deadline:
                raise InvalidInput(detail=f"replica {self.id} is running and keeps its lease")
            log.warning(
                "replica %s: waiting %.1fs for the lease of its earlier process", self.id, got
            )
            time.sleep(min(max(got, 0.05), 1.0))
        self._db = db
        db.guard = self.check
        self._beat.start()
        log.info(
            "replica %s (node %s) registered, lease %gs", self.id, self.node, self.settings.lease
        )

    def stop(self) -> None:
        """Stop the heartbeat and leave the catalog (a clean exit needs no takeover)."""
        self._beat.stop()
        db, self._db = self._db, None
        if db is None or self.fenced is not None:
            return
        try:
            with db.engine.begin() as conn:
                replicarepo.leave(conn, self.id)
        except Exception:  # noqa: BLE001 - the lease expires on its own
            log.warning("replica %s could not leave the catalog", self.id, exc_info=True)

    def beat(self) -> None:
        db = self._db
        if db is None or self.fenced is not None:
            return
        with db.engine.begin() as conn:
            renewed = replicarepo.renew(conn, self.id, self.epoch, self.settings.lease)
        if not renewed:
            self._lost("another replica took over its operations")

    def check(self, conn: Connection) -> None:
        """At the start of every transaction: this replica still holds its lease."""
        if self.fenced is not None:
            raise ReplicaFenced(replica=self.id, detail=self.fenced)
        held = replicarepo.hold(conn, self.id)
        if held is None:
            self._lost("its registration is gone (another replica took over)")
        else:
            epoch, state, left = held
            if epoch != self.epoch or state != "live":
                self._lost(f"fenced at epoch {epoch} (it held {self.epoch})")
            if left <= 0 and not replicarepo.renew(conn, self.id, self.epoch, self.settings.lease):
                self._lost("its lease expired and another replica took over")
        if self.fenced is not None:
            raise ReplicaFenced(replica=self.id, detail=self.fenced)

    def live_nodes(self, conn: Connection) -> set[str] | None:
        """Nodes with a replica holding its lease now (None: one control plane, SQLite)."""
        if not self.active:
            return None
        return {r.node for r in replicarepo.listing(conn) if r.state == "live" and r.lease_left > 0}

    def _lost(self, why: str) -> None:
        with self._guard:
            if self.fenced is None:
                self.fenced = why
                log.error("replica %s no longer serves: %s", self.id, why)
