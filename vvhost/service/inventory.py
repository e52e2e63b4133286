"""Arrays and storage containers."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from sqlalchemy import Connection

from ..arrays import BACKENDS, open_backend
from ..catalog import repo, tenancy, vvolrepo
from ..errors import AlreadyExists, BackendError, HasDependants, InUse, InvalidInput, NotFound
from ..model import Array, Container
from ..units import check_name, parse_size
from .context import Context

DEFAULT_ARRAY = "local"


class ArrayOps:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def ensure_default(self) -> None:
        with self.ctx.db.tx() as conn:
            if repo.get_array(conn, DEFAULT_ARRAY) is not None:
                return
        self.add(
            DEFAULT_ARRAY, "dir", os.path.join(self.ctx.config.state_dir, "arrays", DEFAULT_ARRAY)
        )

    def reprobe(self) -> None:
        """Capabilities are detected, not assumed: look again at every start."""
        for arr in self.listing():
            self.ctx.register(arr)
            try:
                caps = open_backend(arr).probe()
            except BackendError:
                continue
            with self.ctx.db.tx() as conn:
                repo.set_array_capabilities(conn, arr.id, caps)

    def add(self, name: str, backend: str, path: str) -> Array:
        check_name(name, what="array name")
        if backend not in BACKENDS:
            raise InvalidInput(detail=f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        if not os.path.isabs(path):
            raise InvalidInput(detail=f"array path {path!r} must be absolute")
        with self.ctx.db.tx() as conn:
            if repo.get_array(conn, name) is not None:
                raise AlreadyExists(kind="array", ref=name)
        created = not os.path.exists(path)
        arr = Array(
            id=str(uuid.uuid4()),
            name=name,
            backend=backend,
            path=path,
            capabilities={},
            created=time.time(),
        )
        caps = open_backend(arr).probe()
        arr = Array(**{**arr.to_dict(), "capabilities": caps})
        try:
            with self.ctx.db.tx() as conn:
                if repo.get_array(conn, name) is not None:
                    raise AlreadyExists(kind="array", ref=name)
                repo.insert_array(conn, arr)
            self.ctx.register(arr)
        except BaseException:
            if created:
                _remove_empty_tree(path)
            raise
        return arr

    def get(self, conn: Connection, ref: str) -> Array:
        arr = repo.get_array(conn, ref)
        if arr is None:
            raise NotFound(kind="array", ref=ref)
        return arr

    def listing(self) -> list[Array]:
        with self.ctx.db.tx() as conn:
            return repo.list_arrays(conn)

    def show(self, ref: str) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            arr = self.get(conn, ref)
            users = repo.array_users(conn, arr.id)
        out = arr.to_dict()
        out["containers"] = users
        out["snapshot_method"] = (
            "reflink: snapshots and clones are instant copy-on-write"
            if arr.capabilities.get("reflink")
            else "sparse copy: no reflink on this filesystem, snapshots and clones copy the data"
        )
        try:
            out["free"] = self.ctx.backend(arr.id).free_bytes()
        except BackendError:
            out["free"] = None
        return out

    def delete(self, ref: str) -> None:
        with self.ctx.db.tx() as conn:
            arr = self.get(conn, ref)
            users = repo.array_users(conn, arr.id)
            if users:
                raise InUse(
                    kind="array", ref=arr.name, reason=f"containers {', '.join(users)} use it"
                )
            repo.delete_array(conn, arr.id)
        self.ctx.forget_backend(arr.id)


class ContainerOps:
    def __init__(self, ctx: Context, arrays: ArrayOps) -> None:
        self.ctx = ctx
        self.arrays = arrays

    def create(
        self,
        name: str,
        capacity: str | int,
        array_refs: list[str] | None = None,
        tenant: str | None = None,
    ) -> Container:
        check_name(name, what="container name")
        if tenant is not None:
            check_name(tenant, what="tenant")
        size = parse_size(capacity, what="capacity")
        with self.ctx.db.tx() as conn:
            if repo.get_container(conn, name) is not None:
                raise AlreadyExists(kind="container", ref=name)
            if tenant is not None and tenancy.get_tenant(conn, tenant) is None:
                raise NotFound(kind="tenant", ref=tenant)
            ids: list[str] = []
            for ref in array_refs or [DEFAULT_ARRAY]:
                arr = self.arrays.get(conn, ref)
                if arr.id not in ids:
                    ids.append(arr.id)
            c = Container(
                id=str(uuid.uuid4()),
                name=name,
                capacity=size,
                provisioned=0,
                tenant=tenant,
                arrays=ids,
                created=time.time(),
            )
            repo.insert_container(conn, c)
        return c

    def get(self, conn: Connection, ref: str) -> Container:
        c = repo.get_container(conn, ref)
        if c is None:
            raise NotFound(kind="container", ref=ref)
        return c

    def listing(self) -> list[Container]:
        with self.ctx.db.tx() as conn:
            return repo.list_containers(conn)

    def show(self, ref: str) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            c = self.get(conn, ref)
            vvols = vvolrepo.listing(conn, c.id)
            names = {a.id: a.name for a in repo.list_arrays(conn)}
        out = c.to_dict()
        out["array_names"] = [names.get(a, a) for a in c.arrays]
        out["vvols"] = len(vvols)
        out["used"] = sum(self.ctx.backend(v.array).used(v.id) for v in vvols)
        return out

    def delete(self, ref: str) -> None:
        with self.ctx.db.tx() as conn:
            c = self.get(conn, ref)
            mapped = tenancy.datastores_using(conn, c.id)
            if mapped:
                raise InUse(
                    kind="container", ref=c.name, reason=f"datastores {', '.join(mapped)} map it"
                )
            count = repo.container_vvol_count(conn, c.id)
            if count:
                raise HasDependants(
                    kind="container",
                    ref=c.name,
                    what=f"{count} vvols",
                    names="see `vvhost vvol list --container " + c.name + "`",
                )
            repo.delete_container(conn, c.id)


def _remove_empty_tree(path: str) -> None:
    for root, _dirs, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(root)
        except OSError:
            return
