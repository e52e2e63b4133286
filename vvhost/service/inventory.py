"""Arrays and storage containers."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection

from .. import spacemodel
from ..arrays import identity, open_backend, settings_from
from ..arrays.settings import ArraySettings, DirSettings
from ..catalog import bindrepo, repo, spacerepo, tenancy
from ..errors import (
    AlreadyExists,
    BackendError,
    HasDependants,
    InUse,
    InvalidInput,
    NotFound,
    PathConflict,
    VvhostError,
)
from ..model import Array, Container, Pe
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
        spec = dict(self.ctx.config.default_array or {})
        backend = spec.pop("backend", "dir")
        if backend == "dir" and not spec:
            spec = {"path": os.path.join(self.ctx.config.state_dir, "arrays", DEFAULT_ARRAY)}
        self.add(DEFAULT_ARRAY, backend, spec)

    def reprobe(self) -> None:
        """Capabilities are detected, not assumed: look again at every start.  An
        array that cannot be probed (full, I/O errors) is degraded, not fatal; an
        offline one is left alone until it is back."""
        for arr in self.listing():
            self._adopt_unmarked(arr)
            with self.ctx.db.tx() as conn:
                fresh = repo.get_array(conn, arr.id) or arr
            self.ctx.register(fresh)
            self.ctx.probe(fresh)

    def _adopt_unmarked(self, arr: Array) -> None:
        """Arrays added before markers existed get theirs once, if their directory
        still holds the backend's files (an empty mountpoint does not)."""
        if arr.fs_id is not None or arr.path is None:
            return
        marker = identity.read_marker(arr.path)
        if marker is None and os.path.isdir(os.path.join(arr.path, "vvols")):
            try:
                marker = identity.write_marker(arr.path, arr.id, arr.name)
            except OSError:
                return
        if marker is not None and marker.array_id == arr.id:
            with self.ctx.db.tx() as conn:
                repo.set_array_fs_id(conn, arr.id, marker.fs_id)

    def add(self, name: str, backend: str, settings: dict[str, Any]) -> Array:
        """Add an array of ``backend`` with its settings record (``dir``: path;
        ``rbd``: pool, conf, user, keyring)."""
        check_name(name, what="array name")
        record = settings_from(backend, settings)
        with self.ctx.db.tx() as conn:
            if repo.get_array(conn, name) is not None:
                raise AlreadyExists(kind="array", ref=name)
        if isinstance(record, DirSettings):
            return self._add_dir(name, record.path)
        return self._add(name, backend, record, None)

    def _add(self, name: str, backend: str, record: ArraySettings, fs_id: str | None) -> Array:
        arr = Array(
            id=str(uuid.uuid4()),
            name=name,
            backend=backend,
            settings=record,
            capabilities={},
            created=time.time(),
            fs_id=fs_id,
        )
        opened = open_backend(arr, self.ctx.clients)
        try:
            opened.claim()
            arr = replace(arr, capabilities=opened.probe())
            with self.ctx.db.tx() as conn:
                if repo.get_array(conn, name) is not None:
                    raise AlreadyExists(kind="array", ref=name)
                repo.insert_array(conn, arr)
        except BaseException:
            with contextlib.suppress(VvhostError):
                opened.release()
            opened.close()
            raise
        self.ctx.register(arr, opened)  # the same connection serves from now on
        return arr

    def _add_dir(self, name: str, path: str) -> Array:
        if not os.path.isabs(path):
            raise InvalidInput(detail=f"array path {path!r} must be absolute")
        path = os.path.normpath(path)
        with self.ctx.db.tx() as conn:
            self._check_apart(path, repo.list_arrays(conn), bindrepo.list_pes(conn))
        foreign = identity.foreign_reason(path)
        if foreign is not None:
            raise PathConflict(path=path, reason=foreign)
        created = not os.path.exists(path)
        try:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise BackendError(
                    array=name, detail=f"cannot prepare {path}: {exc.strerror or exc}"
                ) from exc
            return self._add(name, "dir", DirSettings(path), identity.fs_identity(path))
        except BaseException:
            if created:
                _remove_empty_tree(path)
            raise

    def _check_apart(self, path: str, arrays: list[Array], pes: list[Pe]) -> None:
        """Arrays never overlap each other, a file endpoint's directory, or the
        control plane's own state (arrays may live under STATE/arrays/)."""
        state = self.ctx.config.state_dir
        rel = identity.relation(path, state)
        arrays_home = os.path.join(state, "arrays")
        if rel in ("same", "contains") or (
            rel == "inside" and identity.relation(path, arrays_home) != "inside"
        ):
            what = "the control plane's state directory"
            why = identity.overlap_reason(path, state, what) or what
            raise PathConflict(path=path, reason=f"{why}; arrays may live under {arrays_home}/")
        catalog = _sqlite_file(self.ctx.db.url)
        if catalog and identity.relation(path, catalog) in ("same", "contains"):
            raise PathConflict(path=path, reason=f"contains the catalog ({catalog})")
        for a in arrays:
            if a.path is None:
                continue
            reason = identity.overlap_reason(path, a.path, f"array {a.name}")
            if reason:
                raise PathConflict(path=path, reason=reason)
        for pe in pes:
            if pe.protocol == "file" and pe.path:
                what = f"the directory of endpoint {pe.name}"
                reason = identity.overlap_reason(path, pe.path, what)
                if reason:
                    raise PathConflict(path=path, reason=reason)

    def get(self, conn: Connection, ref: str) -> Array:
        arr = repo.get_array(conn, ref)
        if arr is None:
            raise NotFound(kind="array", ref=ref)
        return arr

    def listing(self) -> list[Array]:
        """Every array with its state now: ``online``, ``offline`` (its directory is
        not the array: unmounted, replaced) or ``degraded`` (cannot be probed)."""
        with self.ctx.db.tx() as conn:
            arrays = repo.list_arrays(conn)
        return [self.ctx.status(a) for a in arrays]

    def show(self, ref: str) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            arr = self.get(conn, ref)
            users = repo.array_users(conn, arr.id)
        out = self.ctx.status(arr).to_dict()
        out["containers"] = users
        out["snapshot_method"] = _snapshot_method(arr.capabilities)
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
        backend = self.ctx.backend(arr.id)
        with contextlib.suppress(VvhostError):
            backend.release()
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
        overcommit: str | float = 1.0,
        reserve: str | None = None,
        alerts: str | None = None,
    ) -> Container:
        check_name(name, what="container name")
        if tenant is not None:
            check_name(tenant, what="tenant")
        size = parse_size(capacity, what="capacity")
        ratio = spacemodel.parse_overcommit(overcommit)
        kept = spacemodel.parse_reserve(reserve, size) if reserve is not None else 0
        levels = spacemodel.parse_alerts(alerts) if alerts is not None else spacemodel.LEVELS
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
                overcommit=ratio,
                reserve=kept,
                reserve_spec=reserve,
                alerts=levels,
            )
            repo.insert_container(conn, c)
        return c

    def set(
        self,
        ref: str,
        capacity: str | int | None = None,
        overcommit: str | float | None = None,
        reserve: str | None = None,
        alerts: str | None = None,
    ) -> dict[str, Any]:
        """Change capacity, over-subscription, reserve or alert levels; refused (one
        line, nothing changed) when what is provisioned or in use would no longer fit."""
        with self.ctx.db.tx() as conn:
            c = self.get(conn, ref)
            size = parse_size(capacity, what="capacity") if capacity is not None else c.capacity
            ratio = (
                spacemodel.parse_overcommit(overcommit) if overcommit is not None else c.overcommit
            )
            spec = reserve if reserve is not None else c.reserve_spec
            kept = spacemodel.parse_reserve(spec, size) if spec is not None else 0
            levels = spacemodel.parse_alerts(alerts) if alerts is not None else c.alerts
            problem = spacemodel.shrink_problem(spacerepo.usage(conn, c), size, ratio, kept)
            if problem is not None:
                raise InUse(kind="container", ref=c.name, reason=f"cannot shrink it: {problem}")
            repo.set_space_settings(conn, c.id, size, ratio, kept, spec, levels)
        return self.show(c.id)

    def get(self, conn: Connection, ref: str) -> Container:
        c = repo.get_container(conn, ref)
        if c is None:
            raise NotFound(kind="container", ref=ref)
        return c

    def listing(self) -> list[Container]:
        with self.ctx.db.tx() as conn:
            return repo.list_containers(conn)

    def show(self, ref: str) -> dict[str, Any]:
        """The container with its space figures: sums of the catalog's cached
        per-vvol figures (no array is asked; see service/space.py)."""
        with self.ctx.db.tx() as conn:
            c = self.get(conn, ref)
            usage = spacerepo.usage(conn, c)
            names = {a.id: a.name for a in repo.list_arrays(conn)}
        out = c.to_dict()
        out["array_names"] = [names.get(a, a) for a in c.arrays]
        out["space"] = usage.to_dict()
        out["vvols"] = usage.vvols
        out["allocated"] = usage.allocated
        out["unique"] = usage.unique
        out["used"] = usage.used
        out["physical_free"] = usage.physical_free
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


def _sqlite_file(url: str) -> str | None:
    prefix = "sqlite:///"
    return url[len(prefix) :] if url.startswith(prefix) else None


def _remove_empty_tree(path: str) -> None:
    for root, _dirs, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(root)
        except OSError:
            return


def _snapshot_method(caps: dict[str, Any]) -> str:
    if caps.get("reflink"):
        return "reflink: snapshots and clones are instant copy-on-write"
    if caps.get("instant"):
        return "native: snapshots and linked clones are instant copy-on-write"
    return "sparse copy: no reflink on this filesystem, snapshots and clones copy the data"
