"""Binding changes for endpoints that another node's replica runs.

Every replica answers the whole API, but only the replicas on an endpoint's node
run its daemon (tgtd, qemu-storage-daemon).  A replica that changed the bindings of
such an endpoint in the catalog asks that node to apply them and waits:

    requester (any node)                         owner (the endpoint's node)
    tx: rows changed + pe_sync.wanted += 1  ──►  LISTEN vvhost_node_<node> wakes it
        + pg_notify(vvhost_node_<node>)          (or its fallback round, every 2 s)
    poll pe_sync until applied >= wanted         read wanted, resync(pe): the daemon
    (bounded: Config.xnode_wait; early            presents exactly the catalog's
     failure when the node loses its lease)      active bindings; applied = wanted

The owner applies the catalog, not a message: a lost or duplicated notification
costs a round, never correctness, and any number of requests fold into one
resync.  A requester that gives up undoes its rows and asks again, so the daemon
follows the catalog back.  Nothing here runs on SQLite: there one control plane
owns every endpoint and binds locally (no extra statement on that path).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from ..catalog import bindrepo, pesyncrepo
from ..errors import EndpointError, NodeGone, VvhostError
from ..model import Pe
from ..pe import Endpoint, open_endpoint
from .context import Context
from .periodic import Periodic
from .replica import application_name

if TYPE_CHECKING:
    from .endpoints import EndpointManager

log = logging.getLogger(__name__)

POLL = 0.05  # s between the requester's looks at pe_sync
FALLBACK = 2.0  # s between the owner's rounds without a notification
LIVENESS = 0.5  # s between the requester's looks at the node's lease


class CrossNode:
    def __init__(self, ctx: Context, manager: EndpointManager) -> None:
        self.ctx = ctx
        self.manager = manager
        self.wait_for = ctx.config.xnode_wait
        self._apply = Periodic("xnode-apply", FALLBACK, self.apply_pending)
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._views: dict[tuple[str, str], Endpoint] = {}
        self._guard = threading.Lock()

    # -- requester ------------------------------------------------------------------------
    def check_live(self, conn: Connection, pe: Pe, detail: str = "nothing was changed") -> None:
        """Refuse up front when no replica runs on ``pe``'s node."""
        live = self.ctx.replica.live_nodes(conn)
        if live is not None and pe.node is not None and pe.node not in live:
            raise NodeGone(pe=pe.name, node=pe.node, detail=detail)

    def request(self, conn: Connection, pe: Pe) -> int:
        """In the transaction that changed ``pe``'s bindings: ask its node to apply
        them once that transaction commits; returns the generation to wait for."""
        assert pe.node is not None
        return pesyncrepo.request(conn, pe.id, pe.node)

    def ask(self, pe: Pe) -> int:
        with self.ctx.db.tx() as conn:
            return self.request(conn, pe)

    def wait(self, pe: Pe, generation: int) -> None:
        """Until ``pe``'s node applied ``generation``; EndpointError when it failed
        to, NodeGone when its replicas died meanwhile, EndpointError on timeout."""
        deadline = time.monotonic() + self.wait_for
        next_live = time.monotonic() + LIVENESS
        while True:
            with self.ctx.db.tx() as conn:
                got = pesyncrepo.state(conn, pe.id)
                if got is not None and got.applied >= generation:
                    if got.error:
                        raise EndpointError(
                            tool=f"endpoint {pe.name} on node {pe.node}", detail=got.error
                        )
                    return
                now = time.monotonic()
                if now >= next_live:
                    next_live = now + LIVENESS
                    self.check_live(conn, pe, "its replica died before it applied the change")
            if now >= deadline:
                raise EndpointError(
                    tool=f"endpoint {pe.name} on node {pe.node}",
                    detail=f"its replica did not apply the change within {self.wait_for:g} s",
                )
            time.sleep(POLL)

    def apply(self, pe: Pe) -> None:
        """Request and wait in one (the caller's transaction has committed)."""
        self.wait(pe, self.ask(pe))

    def view(self, pe: Pe) -> Endpoint:
        """``pe`` as its owner sees it, for handles (NBD socket paths lie in the
        owner's state directory); this replica's view until the owner recorded it."""
        with self.ctx.db.tx() as conn:
            got = pesyncrepo.state(conn, pe.id)
        state_dir = got.state_dir if got and got.state_dir else None
        if state_dir is None:
            return self.manager.get(pe)
        with self._guard:
            key = (pe.id, state_dir)
            if key not in self._views:
                self._views[key] = open_endpoint(pe, state_dir, self.manager.tls)
            return self._views[key]

    # -- owner ----------------------------------------------------------------------------
    def start(self) -> None:
        """Record where this replica keeps its endpoints, apply what is pending, and
        listen for requests (PostgreSQL only)."""
        if not self.ctx.replica.active:
            return
        with self.ctx.db.tx() as conn:
            for pe in self._mine(conn):
                pesyncrepo.announce(conn, pe.id, self.ctx.config.state_dir)
        self.apply_pending()
        self._apply.start()
        self._stop.clear()
        self._listener = threading.Thread(target=self._listen, name="xnode-listen", daemon=True)
        self._listener.start()

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(5)
            self._listener = None
        self._apply.stop()

    def _mine(self, conn: Connection) -> list[Pe]:
        node = self.ctx.replica.node
        return [p for p in bindrepo.list_pes(conn) if p.node == node]

    def apply_pending(self) -> None:
        """Make each endpoint of this node with an unapplied request present the
        catalog, then acknowledge the generation read before the resync."""
        with self.ctx.db.tx() as conn:
            mine = {p.id: p for p in self._mine(conn)}
            todo = pesyncrepo.pending(conn, list(mine))
        for pe_id, generation in sorted(todo.items()):
            pe = mine[pe_id]
            error = None
            try:
                if self.manager.resync(pe) is None:
                    error = "its daemon is not running (the supervisor restarts it)"
            except (VvhostError, OSError) as exc:
                error = str(exc)
                log.error("endpoint %s: applying the catalog failed: %s", pe.name, error)
            with self.ctx.db.tx() as conn:
                pesyncrepo.ack(conn, pe_id, generation, error, self.ctx.config.state_dir)

    def _listen(self) -> None:
        """Wake the apply round on each notification for this node; reconnect after
        a lost session (the fallback round covers what came meanwhile)."""
        url = make_url(self.ctx.db.url).set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        channel = pesyncrepo.channel(self.ctx.replica.node)
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    conninfo,
                    autocommit=True,
                    application_name=application_name(self.ctx.replica.id),
                    connect_timeout=5,
                ) as conn:
                    conn.execute(
                        psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel))
                    )
                    self._apply.wake()  # anything sent before LISTEN took effect
                    while not self._stop.is_set():
                        for _note in conn.notifies(timeout=1.0, stop_after=1):
                            self._apply.wake()
            except psycopg.Error as exc:
                log.warning("listening for endpoint requests: %s; again in 1 s", exc)
                self._stop.wait(1.0)
