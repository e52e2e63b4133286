"""Per-host Ceph identities for the ``rbd`` endpoint: who may open which images.

    client.vvhost-<host>   one per host and cluster, made by vvhost only
      mon  'profile rbd'
      osd  'profile rbd pool=P namespace=NS1, profile rbd pool=P namespace=NS2, ...'
             exactly the (pool, namespace) pairs of the host's rbd bindings, and of
             the parents of their images (a linked clone in container B of an image
             in container A reads unwritten ranges from A: see ``parent_spaces``)

A namespace is a storage container on an RBD array, so a host's key reaches
its own tenant's containers and nothing else; the cluster itself enforces it.
Within one such namespace a key may write every image: ``profile
rbd-read-only`` for namespaces where a host has only snapshot bindings would
be tighter, but QEMU 7.2's rbd driver then fails to open even a snapshot
("error reading header ...: Operation not permitted"; librbd's own read-only
open works), so read-only stays the binding's and QEMU's business.
The identity lives as long as its host, with the same key::

    first rbd binding        auth get-or-create   caps = its namespaces (key made)
    more / fewer bindings    auth caps            caps follow the namespaces
    last rbd binding goes    auth caps            caps = {} (the key opens nothing:
                                                  not even a monitor session)
    token-rotate             auth rm + get-or-create, same caps (a new key; the old
                                                  one is refused at once)
    host remove              auth rm

``grant`` makes the caps exactly what the caller computed (creating the
identity on first need, emptying its caps when nothing is left), ``rotate``
gives the identity a new key, ``drop`` removes it. Every call is one short
librados connection with the control plane's own Ceph credentials (an array's
``RbdSettings``, as its data sources carry them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..arrays.sources import RbdSource
from ..errors import CephError, NotFound

PREFIX = "vvhost-"  # client ids vvhost makes: client.vvhost-<host>
DEFAULT_NS = '""'  # the pool's default namespace only (a bare pool= would be every one)

Grants = dict[str, set[str]]  # pool -> namespaces


def client_id(host: str) -> str:
    """The host's Ceph client id (without ``client.``)."""
    return f"{PREFIX}{host}"


def entity(host: str) -> str:
    return f"client.{client_id(host)}"


def host_of(entity_name: str) -> str | None:
    """The host of ``client.vvhost-<host>``; None for any other entity."""
    head = f"client.{PREFIX}"
    return entity_name[len(head) :] if entity_name.startswith(head) else None


def caps_for(grants: Grants) -> dict[str, str]:
    """mon and osd caps reaching exactly ``grants`` (pools and namespaces sorted)."""
    osd = ", ".join(
        f"profile rbd pool={pool} namespace={ns or DEFAULT_NS}"
        for pool in sorted(grants)
        for ns in sorted(grants[pool])
    )
    return {"mon": "profile rbd", "osd": osd}


@dataclass(frozen=True)
class Cluster:
    """How the control plane reaches one Ceph cluster (from an array's data source)."""

    conf: str | None
    user: str | None
    keyring: str | None

    @classmethod
    def of(cls, src: RbdSource) -> Cluster:
        return cls(src.conf, src.user, src.keyring)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cluster:
        return cls(data.get("conf"), data.get("user"), data.get("keyring"))

    def to_dict(self) -> dict[str, Any]:
        return {"conf": self.conf, "user": self.user, "keyring": self.keyring}

    def admin(self) -> Any:
        """A ``tools.ceph.Ceph`` with these credentials: ``with`` connects it."""
        from ..tools.ceph import Ceph, CephClient

        client = CephClient(conf=self.conf, user=self.user or "admin", keyring=self.keyring)
        return Ceph(client)


def parent_spaces(cluster: Cluster, sources: list[RbdSource]) -> set[tuple[str, str]]:
    """(pool, namespace) of every ancestor image of ``sources`` (clone parents,
    their parents, ...) outside the sources' own places: librbd reads a clone's
    unwritten ranges from its parent with the client's own key."""
    found: set[tuple[str, str]] = set()
    with cluster.admin() as ceph:
        for src in sources:
            at: tuple[str, str, str, str | None] | None = (
                src.pool, src.namespace, src.image, src.snap
            )  # fmt: skip
            for _depth in range(64):  # clone chains are bounded; never loop forever
                if at is None:
                    break
                at = _parent(ceph, *at)
                if at is not None:
                    found.add((at[0], at[1]))
    return found


def _parent(
    ceph: Any, pool: str, ns: str, image: str, snap: str | None
) -> tuple[str, str, str, str | None] | None:
    """(pool, namespace, image, snapshot) of the parent of ``image@snap``; None
    without one. A parent snapshot gone to the trash (clone v2) cannot be opened
    by name: the parent image's own parent is then read at its head."""
    import rbd

    with ceph.ioctx(pool, ns) as ioctx:
        for point in dict.fromkeys([snap, None]):
            try:
                img = rbd.Image(ioctx, image, snapshot=point, read_only=True)
            except rbd.ImageNotFound:
                continue  # no such snapshot (or image): try the head, then give up
            except rbd.Error as exc:
                raise _failed(ceph, f"opening {pool}/{ns}/{image}: {exc}") from None
            try:
                spec = img.get_parent_image_spec()
            except rbd.ImageNotFound:
                return None  # no parent
            except rbd.Error as exc:
                raise _failed(ceph, f"reading the parent of {pool}/{ns}/{image}: {exc}") from None
            finally:
                img.close()
            return (
                str(spec["pool_name"]),
                str(spec["pool_namespace"]),
                str(spec["image_name"]),
                str(spec["snap_name"]) or None,
            )
    return None


def _failed(ceph: Any, detail: str) -> CephError:
    return CephError(cluster=ceph.client.label(), detail=detail, errno=0)


def _caps(ceph: Any, host: str) -> dict[str, str] | None:
    try:
        return dict(ceph.auth_caps_of(entity(host)))
    except NotFound:
        return None


def wanted_caps(grants: Grants) -> dict[str, str]:
    """The caps an identity with ``grants`` has: none at all without any."""
    grants = {p: ns for p, ns in grants.items() if ns}
    return caps_for(grants) if grants else {}


def grant(cluster: Cluster, host: str, grants: Grants) -> None:
    """Make ``client.vvhost-<host>``'s caps exactly ``grants``: made on first need,
    kept with no caps (and the same key) when no grant is left."""
    wanted = wanted_caps(grants)
    with cluster.admin() as ceph:
        have = _caps(ceph, host)
        if have is None:
            if wanted:
                ceph.auth_get_or_create(entity(host), wanted)
        elif have != wanted:
            ceph.auth_caps(entity(host), wanted)


def rotate(cluster: Cluster, host: str) -> bool:
    """A new key for the host's identity, same caps (the old key is refused at
    once). False when the host has no identity on the cluster."""
    with cluster.admin() as ceph:
        have = _caps(ceph, host)
        if have is None:
            return False
        ceph.auth_rm(entity(host))
        ceph.auth_get_or_create(entity(host), have)
        return True


def drop(cluster: Cluster, host: str) -> None:
    with cluster.admin() as ceph:
        ceph.auth_rm(entity(host))


def access(cluster: Cluster, host: str) -> tuple[str | None, list[str], str]:
    """What a host's handle carries: its cephx key (None without an identity), the
    monitors as ``["IP:PORT", ...]`` and as a ``mon_host`` value. A plain IP:PORT
    means msgr v1 (unless the port is 3300), so the v1 address of each monitor is
    given where it has one."""
    with cluster.admin() as ceph:
        try:
            secret: str | None = str(ceph.auth_get_key(entity(host)))
        except NotFound:
            secret = None
        vectors = [str(v) for v in ceph.mon_addrs()]
    plain = []
    for vec in vectors:
        addrs = [a for a in vec.strip("[]").split(",") if a]
        pick = next((a for a in addrs if a.startswith("v1:")), addrs[0] if addrs else "")
        if pick.startswith(("v1:", "v2:", "any:")):
            pick = pick.split(":", 1)[1]
        plain.append(pick.split("/")[0])
    return secret, plain, ",".join(vectors)


def identities(cluster: Cluster) -> dict[str, dict[str, str]]:
    """host -> caps of every ``client.vvhost-*`` identity on the cluster."""
    out: dict[str, dict[str, str]] = {}
    with cluster.admin() as ceph:
        for name in ceph.auth_ls():
            host = host_of(name)
            if host is not None:
                out[host] = _caps(ceph, host) or {}
    return out
