"""The Ceph identities of hosts with rbd bindings, kept equal to the catalog.

    catalog: host H's bindings through rbd endpoints (active or being made)
        -> vvol -> its array's RbdSource -> (cluster, pool, namespace)
    cluster (per rbd endpoint, cluster.json) -> client.vvhost-H caps = exactly those

``sync(host)`` runs after every bind, unbind and rebind that involves an rbd
endpoint: the caps grow when a binding needs a new namespace, shrink when the
last binding in one goes, and become nothing at all with the host's last rbd
binding on that cluster; the identity and its key stay for the host's
lifetime (no new key per binding, so hosts keep the one they have).
``revoke`` rotates the key (token rotation) or removes the identity (host
removal) on every cluster an rbd endpoint reaches; ``audit`` reports
identities named ``client.vvhost-*`` that match no host, or whose caps differ
from what the catalog says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..arrays.sources import RbdSource
from ..catalog import bindrepo, vvolrepo
from ..errors import VvhostError
from ..model import ACTIVE, ATTACHING, Pe
from ..pe import Endpoint, cephaccess, cephfence
from ..pe.cephaccess import Cluster, Grants
from ..pe.rbd import RbdEndpoint
from .context import Context

log = logging.getLogger("vvhost.rbdaccess")


class RbdAccess:
    def __init__(self, ctx: Context, endpoint: Callable[[Pe], Endpoint]) -> None:
        self.ctx = ctx
        self.endpoint = endpoint

    def clusters(self) -> list[Cluster]:
        """Every cluster an rbd endpoint has served (recorded at its first binding)."""
        with self.ctx.db.tx() as conn:
            pes = [p for p in bindrepo.list_pes(conn) if p.protocol == "rbd"]
        found: list[Cluster] = []
        for pe in pes:
            ep = self.endpoint(pe)
            c = ep.cluster() if isinstance(ep, RbdEndpoint) else None
            if c is not None and c not in found:
                found.append(c)
        return found

    def wanted(self, host: str) -> dict[Cluster, Grants]:
        """cluster -> pool -> namespaces the host's rbd bindings need now."""
        out: dict[Cluster, Grants] = {}
        with self.ctx.db.tx() as conn:
            rbd_pes = {p.id for p in bindrepo.list_pes(conn) if p.protocol == "rbd"}
            rows = [
                b
                for b in bindrepo.find_bindings(conn, host=host)
                if b.pe in rbd_pes and b.state in (ACTIVE, ATTACHING)
            ]
            vvols = [vvolrepo.get(conn, b.vvol) for b in rows]
        sources: dict[Cluster, list[RbdSource]] = {}
        for v in vvols:
            if v is None:
                continue
            src = self.ctx.backend(v.array).source(v.id)
            if isinstance(src, RbdSource):
                sources.setdefault(Cluster.of(src), []).append(src)
        for cluster, found in sources.items():
            grants = out.setdefault(cluster, {})
            for src in found:
                grants.setdefault(src.pool, set()).add(src.namespace)
            for pool, ns in cephaccess.parent_spaces(cluster, found):
                grants.setdefault(pool, set()).add(ns)
        return out

    def sync(self, host: str, only: list[Cluster] | None = None) -> None:
        """Make the host's identity on every cluster (or those in ``only``) reach
        exactly what it needs."""
        wanted = self.wanted(host)
        clusters = self.clusters()
        clusters += [c for c in wanted if c not in clusters]
        for cluster in clusters:
            if only is None or cluster in only:
                cephaccess.grant(cluster, host, wanted.get(cluster, {}))

    def sync_all(self) -> None:
        """At start: every host with rbd bindings or an identity gets exactly what
        its bindings need (a crash between a binding change and its sync). An
        identity whose host is gone stays for ``audit`` to report: it may belong
        to another control plane sharing the cluster."""
        clusters = self.clusters()
        if not clusters:
            return
        present: set[str] = set()
        reachable: list[Cluster] = []  # an unreachable one is not waited for per host
        for cluster in clusters:
            try:
                present |= set(cephaccess.identities(cluster))
                reachable.append(cluster)
            except VvhostError as exc:
                log.error("cannot list the ceph identities on %s: %s", cluster.conf, exc)
        with self.ctx.db.tx() as conn:
            hosts = [h.name for h in bindrepo.list_hosts(conn)]
        for host in hosts:
            try:
                if host in present or self.wanted(host):
                    self.sync(host, only=reachable)
            except VvhostError as exc:
                log.error("ceph identity of host %s not reconciled: %s", host, exc)

    def revoke(self, host: str, removed: bool) -> None:
        """Host removed: its identities go. Token rotated: each gets a new key (the
        old one is refused at once), so its bindings' handles carry the new one."""
        for cluster in self.clusters():
            if removed:
                cephaccess.drop(cluster, host)
            else:
                cephaccess.rotate(cluster, host)

    def fence(self, host: str) -> list[str]:
        """Host fenced: its identity goes on every cluster and its live sessions are
        blocklisted (open librbd clients are cut). Returns the blocklisted addresses."""
        return [addr for cluster in self.clusters() for addr in cephfence.cut(cluster, host)]

    def audit(self) -> list[str]:
        problems: list[str] = []
        with self.ctx.db.tx() as conn:
            hosts = {h.name for h in bindrepo.list_hosts(conn)}
        for cluster in self.clusters():
            where = cluster.conf or "(default ceph.conf)"
            try:
                found = cephaccess.identities(cluster)
            except VvhostError as exc:
                problems.append(f"ceph cluster {where}: cannot list identities: {exc.message}")
                continue
            for host, caps in sorted(found.items()):
                name = cephaccess.entity(host)
                if host not in hosts:
                    problems.append(
                        f"ceph cluster {where}: identity {name} matches no host "
                        f"(caps {caps.get('osd') or 'none'})"
                    )
                    continue
                expected = cephaccess.wanted_caps(self.wanted(host).get(cluster, {}))
                if caps != expected:
                    problems.append(
                        f"ceph cluster {where}: identity {name} has caps "
                        f"{_shown(caps)}, its bindings need {_shown(expected)}"
                    )
        return problems


def _shown(caps: dict[str, str]) -> str:
    """osd caps as an audit line shows them ("none" for an identity without)."""
    if not caps:
        return "none"
    return caps.get("osd") or "none (mon only)"
