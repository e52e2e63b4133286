"""Protocol endpoints: their catalog entries (PeOps) and their running daemons
(EndpointManager), which the control plane starts, adopts, supervises and
reconciles with the bindings in the catalog.

When a bound vvol grows, ``EndpointManager.refresh`` has each endpoint that
presents one of its bindings show the new size; reconciliation does the same
for any attachment found with an outdated size (a crash between growing the
data and refreshing the endpoints)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from typing import Any

from sqlalchemy import Connection

from ..arrays.sources import DataSource, FileSource
from ..catalog import bindrepo, chaprepo, nbdtlsrepo, pesyncrepo, repo, vvolrepo
from ..catalog.db import serialize
from ..catalog.nbdtlsrepo import CatalogTlsStore
from ..certs import NbdCa
from ..errors import AlreadyExists, InUse, InvalidInput, NotFound, ReplicaFenced, VvhostError
from ..model import ACTIVE, ATTACHING, Array, Binding, Host, Pe, Vvol
from ..pe import PROTOCOLS, Attachment, Endpoint, open_endpoint
from ..pe.filepe import FileEndpoint
from ..pe.immutable import clear_immutable, is_immutable
from ..pe.iscsi import DEFAULT_IQN_PREFIX, IscsiEndpoint, WantedTarget
from ..pe.nbdtls import NbdTlsEndpoint, TlsShared
from ..pe.paths import entries, overlaps
from ..pe.proc import stop_pidfile
from ..tools import EndpointError
from ..tools.tgtd_ipc import holder
from ..units import check_name
from .context import Context
from .rbdaccess import RbdAccess
from .xnode import CrossNode

log = logging.getLogger("vvhost.endpoints")
DAEMON_PROTOCOLS = ("iscsi", "nbd")  # endpoints whose daemon runs on the PE's node
_PORTAL = re.compile(r"^(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:]+\]):(?P<port>[0-9]{1,5})$")


class RefreshFailed(EndpointError):
    """A vvol grew, but some endpoints still present its old size."""

    template = (
        "vvol {ref!r} was extended to {size} bytes, but {failed} of its {bindings} bindings "
        "still present the old size: {details}"
    )


def parse_portal(portal: str) -> str:
    m = _PORTAL.match(portal)
    if not m or not 0 < int(m.group("port")) < 65536:
        raise InvalidInput(detail=f"portal {portal!r} is not HOST:PORT")
    return portal


def attachment_key(b: Binding) -> str:
    """The name under which an endpoint presents binding ``b``."""
    return f"{b.tid}/{b.secondary_id}" if b.tid is not None else b.secondary_id


def data_source(ctx: Context, v: Vvol) -> DataSource:
    """Where ``v``'s data is, as its array names it (no check that it is there:
    reconciliation and listings must work while an array is offline)."""
    return ctx.backend(v.array).source(v.id)


def attachment(
    conn: Connection,
    ctx: Context,
    b: Binding,
    v: Vvol | None = None,
    host: Host | None = None,
    source: DataSource | None = None,
) -> Attachment:
    """Everything an endpoint needs to present binding ``b`` (pass the vvol, host
    and data source when the caller has them, to save the lookups)."""
    v = v or vvolrepo.get(conn, b.vvol)
    if v is None:
        raise NotFound(kind="vvol", ref=b.vvol)
    target_iqn = initiator = owner = chap = None
    if b.tid is not None:
        owner, target_iqn = bindrepo.targets(conn, b.pe)[b.tid]
        if owner != "*":
            host = host or bindrepo.get_host(conn, owner)
            initiator = host.iqn if host else None
            chap = chaprepo.get(conn, owner)
    return Attachment(
        key=attachment_key(b),
        secondary_id=b.secondary_id,
        source=source or data_source(ctx, v),
        size=v.size,
        readonly=b.readonly,
        vvol=v.id,
        tid=b.tid,
        target_iqn=target_iqn,
        initiator=initiator,
        shared=owner == "*",
        host=b.host,
        chap=chap,
    )


def catalog_targets(conn: Connection, pe_id: str) -> dict[int, WantedTarget | None]:
    """tid -> (target iqn, initiator name or None for a shared target, the host's
    CHAP account), from the catalog's targets and *current* host rows; None when
    the target's host is gone, fenced or has no initiator name (nobody may use it:
    the target is deleted, logged-in sessions included)."""
    out: dict[int, WantedTarget | None] = {}
    for tid, (owner, iqn) in bindrepo.targets(conn, pe_id).items():
        if owner == "*":
            out[tid] = (iqn, None, None)
            continue
        host = bindrepo.get_host(conn, owner)
        if host is None or not host.iqn or host.fenced is not None:
            out[tid] = None
        else:
            out[tid] = (iqn, host.iqn, chaprepo.get(conn, owner))
    return out


class EndpointManager:
    def __init__(self, ctx: Context, interval: float = 1.0) -> None:
        self.ctx = ctx
        self.interval = interval
        self._eps: dict[str, Endpoint] = {}
        self._guard = threading.Lock()
        self.restarts: dict[str, int] = {}
        self.errors: dict[str, str] = {}  # PE name -> why its daemon did not start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        store = CatalogTlsStore(ctx.db)  # NBD over TLS: one CA and port book, all nodes
        self.tls = TlsShared(NbdCa(ctx.config.state_dir, store), store)
        self.rbd = RbdAccess(ctx, self.get)  # hosts' Ceph identities (rbd endpoints)
        self.remote = CrossNode(ctx, self)  # other nodes' endpoints: ask, wait

    def get(self, pe: Pe) -> Endpoint:
        with self._guard:
            if pe.id not in self._eps:
                self._eps[pe.id] = open_endpoint(pe, self.ctx.config.state_dir, self.tls)
            return self._eps[pe.id]

    def lock(self, pe_ids: list[str]) -> Any:
        return self.ctx.locks.hold([f"pe:{p}" for p in pe_ids])

    def owns(self, pe: Pe) -> bool:
        """This replica runs ``pe``'s daemon: the PE names this node (or none)."""
        return pe.node is None or pe.node == self.ctx.replica.node

    def elsewhere(self, pe: Pe) -> bool:
        """Changes to what ``pe`` presents must be applied by another node's replica:
        its daemon runs there (file and rbd endpoints are changed from any node)."""
        return pe.protocol in DAEMON_PROTOCOLS and not self.owns(pe)

    def presenter(self, pe: Pe) -> Endpoint:
        """``pe`` as the replica running it sees it (for handles)."""
        return self.remote.view(pe) if self.elsewhere(pe) else self.get(pe)

    def start(self, pe: Pe) -> dict[str, int]:
        with self.lock([pe.id]):
            try:
                self.get(pe).start()
            except EndpointError as exc:
                self.errors[pe.name] = exc.message
                raise
            self.errors.pop(pe.name, None)
            return self._reconcile(pe)

    def _reconcile(self, pe: Pe) -> dict[str, int]:
        """Make the daemon present exactly the active bindings of the catalog (and,
        for iSCSI, exactly the catalog's targets, each with its host's ACL; for NBD
        over TLS, daemons that let in exactly each host's current identity)."""
        ep = self.get(pe)
        wanted: dict[str, Attachment] = {}
        unknown: set[str] = set()  # bindings whose data source cannot be told now
        with self.ctx.db.tx() as conn:
            if isinstance(ep, IscsiEndpoint):
                ep.sync_targets(catalog_targets(conn, pe.id))
            reachers = nbdtlsrepo.identities(conn) if isinstance(ep, NbdTlsEndpoint) else {}
            for b in bindrepo.find_bindings(conn, pe=pe.id):
                if b.state != ACTIVE:
                    continue
                try:
                    a = attachment(conn, self.ctx, b)
                except VvhostError as exc:
                    log.error("endpoint %s: binding of %s for %s: %s", pe.name, b.vvol, b.host, exc)
                    unknown.add(attachment_key(b))
                    continue
                wanted[a.key] = a
        if isinstance(ep, NbdTlsEndpoint):
            ep.sync_hosts(reachers)
        present = ep.present()
        for key in sorted(wanted.keys() - present):
            ep.attach(wanted[key])
        for key in sorted(present - wanted.keys() - unknown):
            ep.detach(key)
        if isinstance(ep, FileEndpoint):  # recorded entries someone removed or replaced
            for key in sorted(ep.recorded().keys() - wanted.keys() - present - unknown):
                ep.detach(key)
        stale = ep.stale([wanted[key] for key in sorted(wanted.keys() & present)])
        for key in stale:
            try:
                ep.refresh(wanted[key])
            except (EndpointError, OSError) as exc:
                log.error("endpoint %s still presents an old size for %s: %s", pe.name, key, exc)
        return {
            "attached": len(wanted.keys() - present),
            "detached": len(present - wanted.keys()),
            "refreshed": len(stale),
        }

    def refresh(self, vvol_id: str) -> tuple[int, list[str]]:
        """Have every endpoint that presents a binding of ``vvol_id`` show the size
        of its data now. Returns how many bindings there are and, for each one
        whose endpoint failed, "endpoint P for host H: what went wrong"."""
        with self.ctx.db.tx() as conn:
            rows = bindrepo.find_bindings(conn, vvol=vvol_id)
            pes = {b.pe: bindrepo.get_pe(conn, b.pe) for b in rows}
        failures = []
        asked: dict[str, str | None] = {}  # another node's PE -> its error, asked once
        for b in rows:
            pe = pes[b.pe]
            if pe is None:
                continue
            if self.elsewhere(pe):  # its node's reconcile shows the new size
                if pe.id not in asked:
                    try:
                        self.remote.apply(pe)
                        asked[pe.id] = None
                    except VvhostError as exc:
                        asked[pe.id] = str(exc)
                if asked[pe.id]:
                    failures.append(f"endpoint {pe.name} for host {b.host}: {asked[pe.id]}")
                continue
            try:
                self._refresh_binding(pe, b)
            except (EndpointError, OSError) as exc:
                failures.append(f"endpoint {pe.name} for host {b.host}: {exc}")
        return len(rows), failures

    def _refresh_binding(self, pe: Pe, b: Binding) -> None:
        with self.lock([pe.id]):
            with self.ctx.db.tx() as conn:
                rows = [
                    r
                    for r in bindrepo.find_bindings(conn, vvol=b.vvol, host=b.host, pe=pe.id)
                    if r.state in (ACTIVE, ATTACHING)
                ]
                if not rows:
                    return  # unbound or moved meanwhile: nothing of it to refresh here
                row = rows[0]
                att = attachment(conn, self.ctx, row)
            ep = self.get(pe)
            if row.state == ACTIVE or att.key in ep.present():
                ep.refresh(att)

    def resync(self, pe: Pe) -> dict[str, int] | None:
        """Make a running endpoint present exactly the catalog's active bindings and
        targets now (a host was fenced); None when its daemon is not running (it is
        reconciled when it starts).  Another node's endpoint: its replica does it,
        and this waits for that (None when no replica runs on that node)."""
        if self.elsewhere(pe):
            with self.ctx.db.tx() as conn:
                live = self.ctx.replica.live_nodes(conn)
            if live is not None and pe.node not in live:
                return None
            self.remote.apply(pe)
            return {}
        with self.lock([pe.id]):
            if not self.get(pe).alive():
                return None
            return self._reconcile(pe)

    def drop_target(self, pe: Pe, tid: int) -> None:
        """Delete target ``tid`` of an iSCSI endpoint (its host is being removed)."""
        with self.lock([pe.id]):
            ep = self.get(pe)
            if isinstance(ep, IscsiEndpoint) and ep.alive():
                ep.drop_target(tid)

    def release_readonly(self, vvol_ids: list[str]) -> None:
        """Clear the immutable flag of each read-only vvol's data that no binding
        through a file endpoint presents any more (held: every file endpoint's lock,
        so no such binding is being made meanwhile)."""
        if not vvol_ids:  # most binds and unbinds: no transaction, no endpoint lock
            return
        with self.ctx.db.tx() as conn:
            files = [p.id for p in bindrepo.list_pes(conn) if p.protocol == "file"]
        with self.lock(files), self.ctx.db.tx() as conn:
            paths = []
            for vid in vvol_ids:
                v = vvolrepo.get(conn, vid)
                if v is None or not v.readonly:
                    continue
                if not any(b.pe in files for b in bindrepo.find_bindings(conn, vvol=vid)):
                    try:
                        src = data_source(self.ctx, v)
                    except VvhostError as exc:
                        log.error("cannot tell where the data of %s is: %s", vid, exc)
                        continue
                    if isinstance(src, FileSource):
                        paths.append(src.path)
            for path in paths:
                try:
                    if is_immutable(path):
                        clear_immutable(path)
                except OSError as exc:
                    log.error("cannot clear the immutable flag of %s: %s", path, exc)

    # -- endpoints deleted through another node's replica ------------------------------------
    def _held(self) -> tuple[dict[str, Endpoint], set[str]]:
        """This replica's endpoint objects and the run directories under STATE/pe,
        taken *before* the catalog is read: an endpoint object or run directory only
        exists once its row was committed, so one whose row that later read lacks
        was deleted."""
        with self._guard:
            held = dict(self._eps)
        try:
            dirs = set(os.listdir(self._pe_root()))
        except FileNotFoundError:
            dirs = set()
        return held, dirs

    def _pe_root(self) -> str:
        return os.path.join(self.ctx.config.state_dir, "pe")

    def _reap(self, held: dict[str, Endpoint], dirs: set[str], every: list[Pe]) -> None:
        """Stop the daemons of endpoints whose rows are gone (a delete made through
        another node's replica, also while this one was down) and remove their run
        directories; only daemons recorded in those directories are signalled."""
        ids = {p.id for p in every}
        for pe_id, ep in held.items():
            if pe_id in ids:
                continue
            with self.lock([pe_id]):
                with self._guard:
                    if self._eps.get(pe_id) is not ep:
                        continue  # forgotten meanwhile: deleted through this replica
                    del self._eps[pe_id]
                log.warning("protocol endpoint %s was deleted elsewhere; stopping it", pe_id)
                try:
                    ep.stop()
                except EndpointError as exc:
                    log.error("stopping deleted endpoint %s failed: %s", pe_id, exc)
        for name in sorted(dirs - {p.name for p in every}):
            rundir = os.path.join(self._pe_root(), name)
            for d, _sub, files in os.walk(rundir):
                if "pid" in files and stop_pidfile(d, timeout=1.0):
                    log.warning("stopped a daemon of deleted endpoint %s (%s)", name, d)
            shutil.rmtree(rundir, ignore_errors=True)

    def start_all(self) -> None:
        held, dirs = self._held()
        with self.ctx.db.tx() as conn:
            every = bindrepo.list_pes(conn)
        self._reap(held, dirs, every)
        pes = [p for p in every if self.owns(p)]
        for pe in pes:
            try:
                self.start(pe)
            except EndpointError as exc:
                log.error("protocol endpoint %s did not start: %s", pe.name, exc)
        with self.ctx.db.tx() as conn:  # a crash between unbind and its release
            readonly = [v.id for v in vvolrepo.listing(conn, deferred=True) if v.readonly]
        self.release_readonly(readonly)
        self.rbd.sync_all()  # a crash between a binding change and its Ceph identity
        self._thread = threading.Thread(target=self._supervise, name="pe-supervisor", daemon=True)
        self._thread.start()
        self.remote.start()

    def _supervise(self) -> None:
        """Restart dead endpoints; one that keeps failing (its control port or portal
        held by another process) is retried after 1, 2, 4 ... up to 60 s, with its
        reason kept for ``pe show``."""
        failures: dict[str, tuple[int, float]] = {}  # PE name -> (failures, next try)
        while not self._stop.wait(self.interval):
            held, dirs = self._held()
            try:
                with self.ctx.db.tx() as conn:
                    every = bindrepo.list_pes(conn)
            except ReplicaFenced as exc:  # this process serves no more: nothing to supervise
                log.warning("endpoint supervisor stops: %s", exc.message)
                return
            except VvhostError as exc:  # the catalog out of reach: the next round tries again
                log.warning("endpoint supervisor: %s", exc.message)
                continue
            self._reap(held, dirs, every)
            for pe in (p for p in every if self.owns(p)):
                count, retry_at = failures.get(pe.name, (0, 0.0))
                if time.monotonic() < retry_at:
                    continue
                try:
                    with self.lock([pe.id]):
                        ep = self.get(pe)
                        if ep.alive():
                            failures.pop(pe.name, None)
                            continue
                        log.warning("protocol endpoint %s is down; restarting it", pe.name)
                        ep.start()
                        self.errors.pop(pe.name, None)
                        self._reconcile(pe)
                        self.restarts[pe.name] = self.restarts.get(pe.name, 0) + 1
                        failures.pop(pe.name, None)
                        self.ctx.events.emit(
                            "endpoint.restarted",
                            f"protocol endpoint {pe.name} was down and was restarted",
                            severity="warning",
                            subject=f"pe:{pe.name}",
                            fields={"pe": pe.name, "protocol": pe.protocol},
                        )
                except Exception as exc:  # keep supervising the others
                    if isinstance(exc, EndpointError):
                        self.errors[pe.name] = exc.message
                    failures[pe.name] = (count + 1, time.monotonic() + min(60, 2**count))
                    log.error("restarting protocol endpoint %s failed: %s", pe.name, exc)
                    if count == 0:  # once per outage, not on every retry
                        self.ctx.events.emit(
                            "endpoint.restart-failed",
                            f"protocol endpoint {pe.name} is down and could not be "
                            f"restarted: {exc}",
                            severity="error",
                            subject=f"pe:{pe.name}",
                            fields={"pe": pe.name, "error": str(exc)},
                        )

    def forget(self, pe: Pe) -> None:
        with self._guard:
            ep = self._eps.pop(pe.id, None)
        if ep is not None:
            ep.stop()

    def stop_all(self, keep_daemons: bool = False) -> None:
        self.remote.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._guard:
            eps = list(self._eps.values())
            self._eps.clear()
        if not keep_daemons:
            for ep in eps:
                try:
                    ep.stop()
                except EndpointError as exc:
                    log.error("stopping an endpoint failed: %s", exc)


class PeOps:
    def __init__(self, ctx: Context, manager: EndpointManager) -> None:
        self.ctx = ctx
        self.manager = manager

    def get(self, conn: Connection, ref: str) -> Pe:
        pe = bindrepo.get_pe(conn, ref)
        if pe is None:
            raise NotFound(kind="protocol endpoint", ref=ref)
        return pe

    def create(
        self,
        name: str,
        protocol: str,
        array: str | None = None,
        portal: str | None = None,
        path: str | None = None,
        node: str | None = None,
    ) -> dict[str, Any]:
        """A new endpoint on ``node`` (default: this replica's); the replica on
        that node runs its daemon."""
        check_name(name, what="protocol endpoint name")
        if node is not None:
            check_name(node, what="node name")
        if protocol not in PROTOCOLS:
            raise InvalidInput(detail=f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if portal is not None:
            parse_portal(portal)
        config: dict[str, Any] = {}
        if protocol == "iscsi":
            if portal is None:
                raise InvalidInput(detail="an iscsi endpoint needs --portal HOST:PORT")
            config = {"iqn_prefix": DEFAULT_IQN_PREFIX}
        if protocol == "file":
            if not path or not os.path.isabs(path):
                raise InvalidInput(detail="a file endpoint needs an absolute --path DIR")
        elif path is not None:
            raise InvalidInput(detail=f"--path is for file endpoints, not {protocol}")
        if protocol == "rbd":
            if array is None:
                raise InvalidInput(detail="an rbd endpoint needs --array (an RBD array)")
            if portal is not None:
                raise InvalidInput(detail="an rbd endpoint has no portal: hosts reach Ceph")
        with self.ctx.db.tx() as conn:
            serialize(conn, "pe-create")  # portals and control ports: one chooser at a time
            if bindrepo.get_pe(conn, name) is not None:
                raise AlreadyExists(kind="protocol endpoint", ref=name)
            others = bindrepo.list_pes(conn)
            if portal and any(p.portal == portal for p in others):
                raise InUse(kind="portal", ref=portal, reason="another endpoint listens there")
            if path:
                self._check_file_dir(path, others, repo.list_arrays(conn))
            array_id = None
            if array:
                found = repo.get_array(conn, array)
                if found is None:
                    raise NotFound(kind="array", ref=array)
                if protocol == "rbd" and found.backend != "rbd":
                    raise InvalidInput(
                        detail=f"array {found.name} is a {found.backend} array; "
                        "an rbd endpoint serves RBD arrays only"
                    )
                array_id = found.id
            if protocol == "iscsi":
                config["control_port"] = _free_control_port(
                    {int(p.config["control_port"]) for p in others if p.protocol == "iscsi"}
                )
            pe = Pe(
                id=str(uuid.uuid4()),
                name=name,
                protocol=protocol,
                array=array_id,
                portal=portal,
                path=path,
                config=config,
                created=time.time(),
                node=node or self.ctx.replica.node,
            )
            bindrepo.insert_pe(conn, pe)
        if not self.manager.owns(pe):
            return self.show(pe.id)  # the replica on its node starts it (supervisor round)
        try:
            self.manager.start(pe)
        except BaseException:
            self.manager.forget(pe)
            with self.ctx.db.tx() as conn:
                bindrepo.delete_pe(conn, pe.id)
            shutil.rmtree(
                os.path.join(self.ctx.config.state_dir, "pe", pe.name), ignore_errors=True
            )
            raise
        return self.show(pe.id)

    def _check_file_dir(self, path: str, others: list[Pe], arrays: list[Array]) -> None:
        """A file endpoint's directory is new or empty, and neither is, holds nor lies
        in an array's directory, another endpoint's, or the control plane's state."""
        taken = [(f"array {a.name}'s directory {a.path}", a.path) for a in arrays if a.path]
        taken += [(f"endpoint {p.name}'s directory {p.path}", p.path) for p in others if p.path]
        taken.append(
            (
                f"the control plane's state directory {self.ctx.config.state_dir}",
                self.ctx.config.state_dir,
            )
        )
        for what, other in taken:
            if overlaps(path, other):
                raise InUse(kind="directory", ref=path, reason=f"it overlaps {what}")
        if os.path.lexists(path) and not os.path.isdir(path):
            raise InvalidInput(detail=f"{path} exists and is not a directory")
        found = entries(path)
        if found:
            raise InUse(
                kind="directory",
                ref=path,
                reason=f"it holds {len(found)} entries (first: {found[0]!r}); a file "
                "endpoint needs a new or empty directory",
            )

    def listing(self) -> list[dict[str, Any]]:
        with self.ctx.db.tx() as conn:
            pes = bindrepo.list_pes(conn)
        return [self.show(p.id) for p in pes]

    def show(self, ref: str) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            pe = self.get(conn, ref)
            count = len(bindrepo.find_bindings(conn, pe=pe.id))
        out = pe.to_dict()
        with self.ctx.db.tx() as conn:
            live = self.ctx.replica.live_nodes(conn)
        gone = live is not None and pe.node is not None and pe.node not in live
        out["node_state"] = "node-gone" if gone else "live"
        if not self.manager.owns(pe):  # another node's replica runs its daemon
            out.update(bindings=count, alive=out["node_state"] == "live", restarts=0, pid=None)
            return out
        ep = self.manager.get(pe)
        out.update(bindings=count, alive=ep.alive(), restarts=self.manager.restarts.get(pe.name, 0))
        out["error"] = self.manager.errors.get(pe.name)
        pid = getattr(getattr(ep, "daemon", None), "pid", None)
        out["pid"] = pid
        if hasattr(ep, "daemons"):  # TCP NBD: one daemon per host
            out["daemons"] = ep.daemons()
        return out

    def delete(self, ref: str) -> None:
        with self.ctx.db.tx() as conn:
            pe = self.get(conn, ref)
        with self.manager.lock([pe.id]):
            with self.ctx.db.tx() as conn:
                users = bindrepo.find_bindings(conn, pe=pe.id)
                if users:
                    raise InUse(
                        kind="protocol endpoint",
                        ref=pe.name,
                        reason=f"{len(users)} bindings use it (first: vvol {users[0].vvol} "
                        f"for host {users[0].host})",
                    )
                bindrepo.delete_pe(conn, pe.id)
                pesyncrepo.forget(conn, pe.id)
            self.manager.forget(pe)
        shutil.rmtree(os.path.join(self.ctx.config.state_dir, "pe", pe.name), ignore_errors=True)


def _free_control_port(taken: set[int]) -> int:
    for port in range(100, 10000):
        if port in taken or holder(port) is not None:  # a live tgtd owns it
            continue
        return port
    raise InvalidInput(detail="no free tgtd control port")
