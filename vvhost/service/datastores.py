"""Datastores: allocated by the control plane with an id in NAA LUN form (seed 1),
mapped onto containers that can hold their capacity, and resolved for a host
into the containers, arrays and protocol endpoints it needs to run VMs there.

Placement of a vvol created "in the datastore": the explicit ``--container`` if
given (it must belong to the datastore), else the datastore's container with the
most free space.  The datastore's capacity bounds the logical size of its vvols.

What a host is shown (``viewer``: its tenant) is cut to what it may see:

    show / list     vvols, provisioned   only the viewer's tenant's vvols
                    free                 the datastore's room (what it can still create)
    resolve         arrays               id, name, backend; never a filesystem path
                    pes                  each endpoint with the datastore's arrays it
                                         can serve (``arrays``: ids), so a host picks
                                         one that reaches every disk of a VM

Which backends an endpoint protocol serves (``SERVES``): a ``dir`` file through
any of iscsi, nbd and file; an RBD image through rbd (QEMU's own librbd), nbd (a
qemu-storage-daemon rbd node) or iscsi (tgtd over a FUSE export of such a node).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import Connection

from ..catalog import bindrepo, repo, tenancy, vvolrepo
from ..errors import AlreadyExists, CapacityExceeded, HasDependants, InvalidInput, NotFound
from ..model import Array, Container, Datastore, Pe
from ..naa import make_naa
from ..units import check_name, parse_size
from .context import Context
from .inventory import ContainerOps

INSTALLATION = "naa-installation"
ADMIN_VIEW: Any = object()  # a viewer who sees every tenant's vvols
COUNTER = "naa-datastore"
SERVES: dict[str, tuple[str, ...]] = {
    "iscsi": ("dir", "rbd"),
    "nbd": ("dir", "rbd"),
    "file": ("dir",),
    "rbd": ("rbd",),
}


class DatastoreOps:
    def __init__(self, ctx: Context, containers: ContainerOps, oui: str) -> None:
        self.ctx = ctx
        self.containers = containers
        self.oui = oui

    def get(self, conn: Connection, ref: str) -> Datastore:
        ds = tenancy.get_datastore(conn, ref)
        if ds is None:
            raise NotFound(kind="datastore", ref=ref)
        return ds

    def new_id(self, conn: Connection) -> str:
        """A fresh NAA type 6 id; the counter never goes back, so ids are never reused."""
        installation = tenancy.get_or_init(conn, INSTALLATION, secrets.randbelow(1 << 36))
        return make_naa(self.oui, installation, tenancy.next_value(conn, COUNTER))

    def _pick(
        self, conn: Connection, need: int, tenant: str | None, taken: list[Container]
    ) -> list[Container]:
        """Containers (free space first) whose free space adds up to ``need``."""
        chosen: list[Container] = []
        have = sum(c.free for c in taken)
        candidates = sorted(
            (
                c
                for c in repo.list_containers(conn)
                if c.tenant in (None, tenant) and c.id not in {t.id for t in taken}
            ),
            key=lambda c: -c.free,
        )
        for c in candidates:
            if have >= need:
                break
            if c.free > 0:
                chosen.append(c)
                have += c.free
        if have < need:
            raise CapacityExceeded(
                container="(all containers)", free=have, capacity=have, needed=need
            )
        return chosen

    def create(
        self,
        name: str,
        capacity: str | int,
        containers: list[str] | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        check_name(name, what="datastore name")
        size = parse_size(capacity, what="capacity")
        with self.ctx.db.tx() as conn:
            if tenant is not None and tenancy.get_tenant(conn, tenant) is None:
                raise NotFound(kind="tenant", ref=tenant)
            if tenancy.get_datastore(conn, name) is not None:
                raise AlreadyExists(kind="datastore", ref=name)
            if containers:
                picked = [self.containers.get(conn, ref) for ref in containers]
                for c in picked:
                    if c.tenant not in (None, tenant):
                        raise InvalidInput(
                            detail=f"container {c.name} belongs to tenant {c.tenant}"
                        )
                if sum(c.free for c in picked) < size:
                    free = sum(c.free for c in picked)
                    raise CapacityExceeded(
                        container=",".join(c.name for c in picked),
                        free=free,
                        capacity=sum(c.capacity for c in picked),
                        needed=size,
                    )
            else:
                picked = self._pick(conn, size, tenant, [])
            ds = Datastore(
                id=self.new_id(conn),
                name=name,
                capacity=size,
                tenant=tenant,
                containers=[c.id for c in picked],
                created=time.time(),
            )
            tenancy.insert_datastore(conn, ds)
            return self._describe(conn, ds)

    def _describe(
        self, conn: Connection, ds: Datastore, viewer: str | None = ADMIN_VIEW
    ) -> dict[str, Any]:
        cs = [self.containers.get(conn, cid) for cid in ds.containers]
        names = {a.id: a.name for a in repo.list_arrays(conn)}
        provisioned = vvolrepo.provisioned_in_datastore(conn, ds.id)
        if viewer is ADMIN_VIEW:
            count, _ = vvolrepo.tally(conn, ds.id)
            shown = provisioned
        elif viewer is None:  # a caller of no tenant owns none of them
            count, shown = 0, 0
        else:
            count, shown = vvolrepo.tally(conn, ds.id, tenant=viewer)
        return {
            **ds.to_dict(),
            "container_names": [c.name for c in cs],
            "arrays": sorted({names[a] for c in cs for a in c.arrays}),
            "provisioned": shown,
            "free": ds.capacity - provisioned,
            "vvols": count,
        }

    def show(self, ref: str, viewer: str | None = ADMIN_VIEW) -> dict[str, Any]:
        """``viewer``: the tenant whose vvols are counted (default: all, for admins)."""
        with self.ctx.db.tx() as conn:
            return self._describe(conn, self.get(conn, ref), viewer)

    def listing(
        self, tenant: str | None = None, viewer: str | None = ADMIN_VIEW
    ) -> list[dict[str, Any]]:
        with self.ctx.db.tx() as conn:
            return [
                self._describe(conn, ds, viewer) for ds in tenancy.list_datastores(conn, tenant)
            ]

    def delete(self, ref: str) -> None:
        with self.ctx.db.tx() as conn:
            ds = self.get(conn, ref)
            held = vvolrepo.listing(conn, datastore_id=ds.id, deferred=True)
            if held:
                raise HasDependants(
                    kind="datastore",
                    ref=ds.name,
                    what=f"{len(held)} vvols",
                    names=", ".join(v.name or v.id for v in held[:5]),
                )
            tenancy.delete_datastore(conn, ds.id)

    def extend(self, ref: str, capacity: str | int) -> dict[str, Any]:
        size = parse_size(capacity, what="capacity")
        with self.ctx.db.tx() as conn:
            ds = self.get(conn, ref)
            if size < ds.capacity:
                raise InvalidInput(
                    detail=f"datastore {ds.name} is {ds.capacity} bytes; shrinking is not supported"
                )
            current = [self.containers.get(conn, cid) for cid in ds.containers]
            room = sum(c.free for c in current) + vvolrepo.provisioned_in_datastore(conn, ds.id)
            extra = (
                self._pick(
                    conn, size - vvolrepo.provisioned_in_datastore(conn, ds.id), ds.tenant, current
                )
                if room < size
                else []
            )
            tenancy.set_datastore_containers(conn, ds.id, ds.containers + [c.id for c in extra])
            tenancy.update_datastore(conn, ds.id, capacity=size)
            return self._describe(conn, self.get(conn, ds.id))

    def resolve(self, ref: str, host: str, paths: bool = True) -> dict[str, Any]:
        """What ``host`` needs to run VMs on the datastore: containers, arrays, endpoints
        (array paths only with ``paths``: admins; hosts reach data through endpoints)."""
        with self.ctx.db.tx() as conn:
            ds = self.get(conn, ref)
            h = bindrepo.get_host(conn, host)
            if h is None:
                raise NotFound(kind="host", ref=host)
            if ds.tenant is not None and h.tenant != ds.tenant:
                raise NotFound(kind="datastore", ref=ref)
            cs = [self.containers.get(conn, cid) for cid in ds.containers]
            array_ids = {a for c in cs for a in c.arrays}
            arrays = [a for a in repo.list_arrays(conn) if a.id in array_ids]
            pes = [p for p in bindrepo.list_pes(conn) if p.array is None or p.array in array_ids]
        return {
            "datastore": ds.id,
            "name": ds.name,
            "host": host,
            "capacity": ds.capacity,
            "containers": [{"id": c.id, "name": c.name, "arrays": c.arrays} for c in cs],
            "arrays": [
                {"id": a.id, "name": a.name, "backend": a.backend}
                | ({"path": a.path} if paths else {})
                for a in arrays
            ],
            "pes": [
                {
                    "name": p.name,
                    "protocol": p.protocol,
                    "portal": p.portal,
                    "path": p.path,
                    "arrays": _served(p, arrays),
                }
                for p in pes
            ],
        }

    # -- placement for vvols ----------------------------------------------------------------
    def place(
        self, conn: Connection, ds_ref: str, container: str | None, size: int, pe: Pe | None = None
    ) -> tuple[Datastore, Container]:
        """The datastore and the container a new vvol goes to; with ``pe``, only a
        container with an array that endpoint can serve (see ``serving``)."""
        ds = self.get(conn, ds_ref)
        _check_room(conn, ds, size)
        members = [self.containers.get(conn, cid) for cid in ds.containers]
        if container is not None:
            chosen = self.containers.get(conn, container)
            if chosen.id not in ds.containers:
                raise InvalidInput(
                    detail=f"container {chosen.name} is not part of datastore {ds.name}"
                )
            members = [chosen]
        if pe is not None:
            arrays = repo.list_arrays(conn)
            fit = [c for c in members if serving(pe, c, arrays)]
            if not fit:
                raise InvalidInput(detail=_unserved(pe, members, arrays, f"datastore {ds.name}"))
            members = fit
        return ds, max(members, key=lambda c: c.free)


def serving(pe: Pe, c: Container, arrays: list[Array]) -> list[str]:
    """The ids of container ``c``'s arrays whose vvols endpoint ``pe`` can serve."""
    return _served(pe, [a for a in arrays if a.id in c.arrays])


def check_serving(conn: Connection, pe: Pe, c: Container) -> list[str]:
    """``serving``, refusing a container the endpoint serves none of in one line."""
    arrays = repo.list_arrays(conn)
    found = serving(pe, c, arrays)
    if not found:
        raise InvalidInput(detail=_unserved(pe, [c], arrays, f"container {c.name}"))
    return found


def _unserved(pe: Pe, members: list[Container], arrays: list[Array], where: str) -> str:
    """One line: why endpoint ``pe`` reaches none of ``members``' arrays."""
    on = [a for a in arrays if any(a.id in c.arrays for c in members)]
    names = {a.id: a.name for a in arrays}
    what = " and ".join(SERVES.get(pe.protocol, ())) or "no"
    scope = f" (this one only array {names.get(pe.array, pe.array)})" if pe.array else ""
    held = ", ".join(f"{a.backend} array {a.name}" for a in on) or "no array"
    return (
        f"endpoint {pe.name} cannot serve {where}: {pe.protocol} serves {what} arrays"
        f"{scope}, {where} is on {held}"
    )


def _served(pe: Pe, arrays: list[Array]) -> list[str]:
    """The ids of ``arrays`` whose vvols ``pe`` can serve."""
    kinds = SERVES.get(pe.protocol, ())
    return [a.id for a in arrays if a.backend in kinds and pe.array in (None, a.id)]


def check_datastore_room(conn: Connection, ds_id: str | None, size: int) -> None:
    """Snapshots, clones and extends inside a datastore count against its capacity."""
    if ds_id is None:
        return
    ds = tenancy.get_datastore(conn, ds_id)
    if ds is not None:
        _check_room(conn, ds, size)


def _check_room(conn: Connection, ds: Datastore, size: int) -> None:
    used = vvolrepo.provisioned_in_datastore(conn, ds.id)
    if used + size > ds.capacity:
        raise CapacityExceeded(
            container=f"datastore {ds.name}",
            free=ds.capacity - used,
            capacity=ds.capacity,
            needed=size,
        )
