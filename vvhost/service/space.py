"""Space accounting: admission of new charges, and keeping the catalog's cached
figures fresh.

    operation ──admit()──▶ containers.provisioned (+charge, conditional)  ┐ one
                           Σ vvols.held + estimate  vs  capacity − reserve ┘ transaction
    after it  ──refresh(family)──▶ array.space(id) ──▶ vvols figures, provisioned ± Δcharge
    serve     ──SpaceRefresher (thread)──▶ refresh(oldest figures first)

Reading (``container show``) only sums catalog rows; only refreshes ask arrays.
Usage crossing 80 % / 90 % is detected in ``SpaceOps.refresh`` and ``admit``:
it becomes a ``capacity.threshold`` event (warning at 80 %, error at 90 %, the
container's tenant) in the same transaction, and is handed to
``SpaceOps.on_threshold``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from sqlalchemy import Connection

from ..catalog import repo, spacerepo, vvolrepo
from ..errors import CapacityExceeded, NotFound, ReserveReached, VvhostError
from ..model import DEFERRED, READY, Container, Vvol
from ..spacemodel import Figures, Usage, charge, crossed, held
from .context import Context
from .periodic import Periodic

log = logging.getLogger(__name__)

# (container name, level crossed, usage fraction now)
ThresholdHook = Callable[[str, float, float], None]


def log_threshold(container: str, level: float, fraction: float) -> None:
    log.warning(
        "container %s passed %d%% of its space (now %.1f%%)", container, level * 100, fraction * 100
    )


class SpaceOps:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.on_threshold: ThresholdHook = log_threshold
        self._soon: list[str] = []  # vvols whose family is refreshed after the answer
        self._guard = threading.Lock()
        self.wake: Callable[[], None] | None = None  # set by a running SpaceRefresher

    # -- admission (inside the caller's transaction) ------------------------------------
    def admit(
        self,
        conn: Connection,
        c: Container,
        logical: int,
        physical: int,
        action: str,
        keep_reserve: bool = False,
    ) -> None:
        """Charge ``logical`` bytes to the container's provisioned total and make sure
        ``physical`` more fit (above the reserve when ``keep_reserve``); raises and
        changes nothing otherwise.  ``c`` was read in this transaction; the caller
        records the vvol rows in it too."""
        sums = self.usage(conn, c) if physical or logical or keep_reserve else None
        provisioned = repo.reserve_to(conn, c.id, logical)
        if provisioned is None:
            fresh = repo.get_container(conn, c.id) or c
            raise CapacityExceeded(
                container=c.name, free=fresh.free, capacity=fresh.limit, needed=logical
            )
        if sums is None:
            return
        # the sums were read in this transaction; the provisioned total is the one
        # this update left (others' reservations included)
        before = replace(sums, provisioned=provisioned - logical)
        if physical or keep_reserve:
            left = c.capacity - sums.used - physical
            if keep_reserve and left < c.reserve:
                raise ReserveReached(
                    container=c.name,
                    reserve=c.reserve,
                    action=action,
                    needed=physical,
                    left=max(left, 0),
                    capacity=c.capacity,
                )
            if left < 0:
                raise CapacityExceeded(
                    container=c.name,
                    free=left + physical,
                    capacity=c.capacity,
                    needed=physical,
                )
        after = replace(sums, provisioned=provisioned, used=sums.used + physical)
        self._report(conn, c, before.fraction, after.fraction)

    def usage(self, conn: Connection, c: Container) -> Usage:
        return spacerepo.usage(conn, c)

    # -- figures ------------------------------------------------------------------------
    def figures(self, v: Vvol) -> Figures | None:
        """What the array says now (None while it cannot be asked)."""
        if v.state not in (READY, DEFERRED):
            return None  # busy: the operation refreshes it when done
        try:
            backend = self.ctx.backend(v.array)
            if backend.offline() is not None or not backend.exists(v.id):
                return None
            s = backend.space(v.id)
            exclusive = backend.exclusive(v.id, self._newer(v)) if v.is_snapshot else None
        except VvhostError as exc:
            log.info("space of vvol %s not read: %s", v.id, exc.message)
            return None
        return Figures(allocated=s.allocated, unique=s.unique, exclusive=exclusive)

    def _newer(self, snap: Vvol) -> list[str]:
        """The later points of a snapshot's family: later snapshots of its base, and
        the base itself."""
        with self.ctx.db.tx() as conn:
            siblings = vvolrepo.dependants(conn, snap.parent or "")
        later = [
            s.id for s in siblings if s.is_snapshot and (s.created, s.id) > (snap.created, snap.id)
        ]
        return [*later, snap.parent or ""]

    def refresh(self, ids: Iterable[str]) -> int:
        """Read the figures of these vvols from their arrays (outside any transaction),
        then store them, one transaction per container; returns how many were stored.
        Vvols that are gone, busy or moved meanwhile are skipped (their operation
        refreshes them when done)."""
        wanted = list(dict.fromkeys(ids))
        with self.ctx.db.tx() as conn:
            rows = [v for v in (vvolrepo.get(conn, vid) for vid in wanted) if v is not None]
        read: dict[str, list[tuple[Vvol, Figures]]] = {}
        read_at = time.time()  # figures read before a newer refresh stored its own are dropped
        for v in rows:
            f = self.figures(v)
            if f is not None:
                read.setdefault(v.container, []).append((v, f))
        done = 0
        for container_id, batch in read.items():
            with self.ctx.db.tx() as conn:
                repo.lock_container(conn, container_id)  # before any of its vvols' rows
                c = repo.get_container(conn, container_id)
                if c is None:
                    continue
                before = spacerepo.usage(conn, c).fraction
                for v, f in batch:
                    fresh = vvolrepo.get(conn, v.id)
                    if fresh is None or fresh.container != container_id:
                        continue
                    if fresh.state not in (READY, DEFERRED) or fresh.size != v.size:
                        continue
                    spacerepo.record(
                        conn,
                        v.id,
                        allocated=f.allocated,
                        unique=f.unique,
                        charge=charge(fresh.size, fresh.relation, f),
                        held=held(fresh.relation, f),
                        at=read_at,
                    )
                    done += 1
                c = repo.get_container(conn, container_id) or c
                after = spacerepo.usage(conn, c).fraction
                self._report(conn, c, before, after)
        return done

    def refresh_family(self, *vvol_ids: str | None) -> None:
        """Refresh vvols and those whose unique bytes they change (parent, siblings,
        snapshots); never fails the operation that asked (the refresher retries)."""
        ids: list[str] = []
        with self.ctx.db.tx() as conn:
            for vid in vvol_ids:
                if vid:
                    ids += spacerepo.family(conn, vid)
        try:
            self.refresh(ids)
        except VvhostError as exc:
            log.warning("space figures not refreshed: %s", exc.message)

    def refresh_family_soon(self, *vvol_ids: str | None) -> None:
        """``refresh_family`` after the caller has answered (the background refresher
        does it at once); without a running refresher, now."""
        wake = self.wake
        if wake is None:
            self.refresh_family(*vvol_ids)
            return
        with self._guard:
            self._soon += [vid for vid in vvol_ids if vid]
        wake()

    def refresh_soon_now(self) -> None:
        """Refresh what ``refresh_family_soon`` queued."""
        with self._guard:
            ids, self._soon = self._soon, []
        if ids:
            self.refresh_family(*ids)

    def refresh_container(self, ref: str) -> int:
        with self.ctx.db.tx() as conn:
            c = repo.get_container(conn, ref)
            if c is None:
                raise NotFound(kind="container", ref=ref)
            ids = [v.id for v in vvolrepo.listing(conn, c.id, deferred=True)]
        return self.refresh(ids)

    def refresh_stale(self, max_age: float, limit: int = 500) -> int:
        """Refresh up to ``limit`` of the oldest figures; those that could not be
        read now wait for their turn again."""
        now = time.time()
        with self.ctx.db.tx() as conn:
            rows = spacerepo.stale(conn, now - max_age, limit)
        done = self.refresh(r.id for r in rows)
        with self.ctx.db.tx() as conn:
            spacerepo.touch(conn, [r.id for r in rows], now)
        return done

    def _report(self, conn: Connection, c: Container, before: float, after: float) -> None:
        for level in crossed(before, after, c.alerts):
            self.ctx.events.emit_in(
                conn,
                "capacity.threshold",
                f"container {c.name} passed {level:.0%} of its space (now {after:.1%})",
                severity="error" if level >= c.alerts[-1] else "warning",
                subject=f"container:{c.name}",
                fields={"container": c.name, "level": level, "fraction": round(after, 4)},
                tenant=c.tenant,
            )
            self.on_threshold(c.name, level, after)


class SpaceRefresher:
    """Background thread of ``vvhost serve``: re-reads the oldest figures now and then
    so that writes by guests (which the control plane does not see) show up."""

    def __init__(self, space: SpaceOps, interval: float = 30.0, max_age: float = 300.0) -> None:
        self.space = space
        self.interval = interval
        self.max_age = max_age
        self._due = 0.0
        self._thread = Periodic("space-refresh", interval, self._tick)

    def start(self) -> None:
        self._due = time.monotonic() + self.interval
        self._thread.start()
        self.space.wake = self._thread.wake  # families asked for "soon" are done here

    def stop(self) -> None:
        self.space.wake = None
        self._thread.stop()
        self.space.refresh_soon_now()  # nothing asked for is left undone

    def _tick(self) -> None:
        self.space.refresh_soon_now()
        if time.monotonic() >= self._due:
            self._due = time.monotonic() + self.interval
            self.space.refresh_stale(self.max_age)
