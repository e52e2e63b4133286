"""Fencing a replica at the storage too: its Ceph clients, recorded and blocklisted.

A fenced replica writes nothing more to the catalog (every transaction checks
its epoch), but a librados client it opened stays valid: a replica waking up in
the middle of a copy would go on writing images another replica has finished or
rolled back meanwhile.  So:

    this replica                          clientrepo (catalog)        Ceph
    connect to an rbd array ──────────▶ record(me, epoch, array, addr)
      (before any I/O; a fenced replica's record is refused: no connection)
    shut the connection down ─────────▶ forget

    taking over from a dead replica (takeover.py, after fencing it in the
    catalog, before claiming its operations):
    cut(...)  stale clients ─▶ per array, through this replica's own connection:
                               osd blocklist add ADDR (rbdfence.py) ─▶ rows deleted
              a cluster that cannot be reached: logged, rows kept (tried again
              later), the takeover goes on (the catalog side is fenced anyway)

    a client of this replica that Ceph refuses as blocklisted (rbdconn.py):
    cut_off ─▶ a catalog transaction: ReplicaFenced when this replica was fenced
               (the operation stops there); else another party blocklisted it:
               the row goes and the next call connects anew

Only PostgreSQL catalogs have replicas; with SQLite nothing is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..arrays import ArrayBackend
from ..catalog import clientrepo
from ..catalog.db import Database
from ..errors import NotFound, VvhostError
from .replica import Replica

log = logging.getLogger(__name__)


class ClientLog:
    """The ``ClientWatch`` of this replica's array backends."""

    def __init__(self, db: Database, replica: Replica) -> None:
        self.db = db
        self.replica = replica

    def connected(self, array_id: str, addr: str) -> None:
        if not self.replica.active:
            return
        with self.db.tx() as conn:  # the lease check refuses a fenced replica here
            clientrepo.record(conn, self.replica.id, self.replica.epoch, array_id, addr)
        log.info("replica %s: array %s client %s", self.replica.id, array_id, addr)

    def closed(self, array_id: str, addr: str) -> None:
        if not self.replica.active:
            return
        with self.db.tx() as conn:
            clientrepo.forget(conn, self.replica.id, array_id, addr)

    def cut_off(self, array_id: str, addr: str) -> None:
        log.warning("array %s: ceph blocklisted this replica's client %s", array_id, addr)
        if not self.replica.active:
            return
        with self.db.tx() as conn:  # raises ReplicaFenced when that is why
            clientrepo.forget(conn, self.replica.id, array_id, addr)


@dataclass
class Cut:
    """What ``cut`` did for one replica."""

    blocklisted: list[str] = field(default_factory=list)  # addresses
    failed: list[str] = field(default_factory=list)  # "array A: why" (rows kept)

    def note(self) -> str:
        text = f"{len(self.blocklisted)} ceph clients blocklisted"
        if self.failed:
            text += f", not reached: {'; '.join(self.failed)}"
        return text


def cut(
    db: Database, backend: Callable[[str], ArrayBackend], replicas: list[str] | None = None
) -> dict[str, Cut]:
    """Blocklist the stale clients (of ``replicas`` only, when given), each through
    this replica's connection to its array; per replica, what was done."""
    with db.tx() as conn:
        stale = clientrepo.stale(conn, replicas)
    by_array: dict[str, list[clientrepo.Client]] = {}
    for client in stale:
        by_array.setdefault(client.array_id, []).append(client)
    done: dict[str, Cut] = {}
    for array_id, clients in by_array.items():
        addrs = sorted({c.addr for c in clients})
        try:
            backend(array_id).fence_clients(addrs)
        except NotFound:
            log.info("array %s is gone: its clients %s need no blocklisting", array_id, addrs)
        except VvhostError as exc:  # one cluster out of reach never stops the control plane
            log.warning("array %s: clients %s not blocklisted: %s", array_id, addrs, exc)
            for c in clients:
                failed = done.setdefault(c.replica, Cut()).failed
                if f"array {array_id}: {exc}" not in failed:
                    failed.append(f"array {array_id}: {exc}")
            continue
        else:
            for c in clients:
                done.setdefault(c.replica, Cut()).blocklisted.append(c.addr)
        with db.tx() as conn:
            clientrepo.remove(conn, clients)
    return done
