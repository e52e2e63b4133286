"""API client: what the CLI (and later the libvirt hook) use to talk to the
control plane.  The same class runs over a unix socket or in-process against the
ASGI app, so contract tests exercise both."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from .api.schemas import admin as a
from .api.schemas import binding as b
from .api.schemas import inventory as i
from .api.schemas import vvols as v
from .api.schemas.common import Page
from .errors import InternalError, InvalidInput, from_wire
from .failover import Endpoint, Failover, split_servers

# What a listing's ``page`` takes: the path of each listing route.
LISTINGS: dict[str, tuple[str, Any]] = {
    "arrays": ("/v1/arrays", i.ArrayOut),
    "containers": ("/v1/containers", i.ContainerOut),
    "pes": ("/v1/pes", i.PeOut),
    "hosts": ("/v1/hosts", i.HostOut),
    "tenants": ("/v1/tenants", i.TenantOut),
    "admin-tokens": ("/v1/admin-tokens", i.TokenInfo),
    "vvols": ("/v1/vvols", v.VvolOut),
    "bindings": ("/v1/bindings", b.HandleOut),
    "datastores": ("/v1/datastores", v.DatastoreOut),
}
DEFAULT_SOCKET = "/run/vvhost/vvhost.sock"
TIMEOUT = httpx.Timeout(connect=5.0, read=3600.0, write=60.0, pool=60.0)


class Client:
    """The API over one or several control-plane replicas (see :mod:`vvhost.failover`
    for which failed requests go to the next replica and which never do)."""

    def __init__(self, http: httpx.Client | Failover, address: str = "") -> None:
        self.conn = http if isinstance(http, Failover) else Failover([Endpoint(address, http)])

    @property
    def http(self) -> httpx.Client:
        """The connection pool to the replica that answered last."""
        return self.conn.endpoint.http

    @property
    def address(self) -> str:
        """The replica that answered last (its URL, or the unix socket's path)."""
        return self.conn.endpoint.address

    @classmethod
    def unix(cls, path: str, timeout: httpx.Timeout = TIMEOUT) -> Client:
        return cls(Failover([Endpoint.open(f"unix://{path}", None, None, timeout)]))

    @classmethod
    def https(
        cls, url: str, token: str, ca: str | None = None, timeout: httpx.Timeout = TIMEOUT
    ) -> Client:
        """A remote control plane over TLS; ``ca`` verifies its certificate.  ``url``
        may list several replicas (``https://a:8443,https://b:8443``)."""
        return cls.connect(split_servers(url), token, ca, timeout)

    @classmethod
    def connect(
        cls,
        servers: list[str],
        token: str | None = None,
        ca: str | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> Client:
        """Replicas in the order given: ``unix:///PATH`` and/or ``https://HOST:PORT``
        (``token`` and ``ca`` serve every https one)."""
        return cls(Failover([Endpoint.open(url, token, ca, timeout) for url in servers]))

    def twin(self) -> Client:
        """A second client of the same replicas (its own connections), starting at
        the one that answered last; ``self`` when they cannot be opened again."""
        endpoints = [ep.reopen() for ep in self.conn.endpoints]
        if not all(endpoints):  # in-process, or a pool the caller made: share it
            return self
        return Client(Failover([ep for ep in endpoints if ep], self.conn.current))

    @classmethod
    def in_process(cls, app: Any) -> Client:
        from starlette.testclient import TestClient

        return cls(TestClient(app, raise_server_exceptions=False), "in-process")

    def close(self) -> None:
        self.conn.close()

    def call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        if "//" in path or path.endswith("/"):  # a name or id the caller left empty
            raise InvalidInput(detail=f"a name or id is empty (in {method} {path})")
        resp = self.conn.send(method, path, json=json, params=clean or None)
        if resp.status_code == 204:
            return None
        payload = self._json(resp)
        if resp.status_code >= 400:
            raise from_wire(payload if isinstance(payload, dict) else {}, resp.status_code)
        return payload

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise InternalError(
                detail=f"HTTP {resp.status_code} with a body that is not JSON"
            ) from None

    @staticmethod
    def _typed(model: Any, payload: Any) -> Any:
        """``payload`` checked against the route's response model (the one the server
        declares), as JSON-ready data: an answer off the contract is an error here."""
        adapter = _adapter(model)
        try:
            parsed = adapter.validate_python(payload)
        except ValidationError as exc:
            errors = exc.errors()
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
            what = errors[0]["msg"] if errors else "invalid"
            raise InternalError(
                detail=f"the server's answer does not match the API ({where or 'body'}: {what})"
            ) from None
        return adapter.dump_python(parsed, mode="json", exclude_unset=True)

    def _ask(
        self,
        model: Any,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        return self._typed(model, self.call(method, path, json=json, params=params))

    def _all(
        self, path: str, item: Any, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every item of a listing: follows the ``next`` cursor to the last page."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            got = self._ask(
                _page_of(item), "GET", path, params={**(params or {}), "cursor": cursor}
            )
            items += got["items"]
            cursor = got.get("next")
            if not cursor:
                return items

    def page(
        self,
        listing: str,
        limit: int | None = None,
        cursor: str | None = None,
        **filters: str | None,
    ) -> dict[str, Any]:
        """One page of a listing (``arrays``, ``vvols``, ... see :data:`LISTINGS`):
        ``{"items": [...], "next": cursor or None}``; pass ``next`` on for the next page."""
        if listing not in LISTINGS:
            raise InvalidInput(detail=f"no listing {listing!r}; one of {sorted(LISTINGS)}")
        path, item = LISTINGS[listing]
        params = {**filters, "limit": limit, "cursor": cursor}
        page: dict[str, Any] = self._ask(_page_of(item), "GET", path, params=params)
        return page

    def _raise(self, resp: httpx.Response) -> None:
        payload = self._json(resp)
        raise from_wire(payload if isinstance(payload, dict) else {}, resp.status_code)

    # -- the API, one method per route ----------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._ask(a.HealthOut, "GET", "/v1/health")

    def audit(self) -> dict[str, Any]:
        return self._ask(a.AuditOut, "GET", "/v1/audit")

    def audit_fix(self, grace: float | None = None) -> dict[str, Any]:
        return self._ask(a.AuditFixOut, "POST", "/v1/audit/fix", params={"grace": grace})

    def events(
        self,
        cursor: int = 0,
        since: float | None = None,
        limit: int | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Events after ``cursor`` (and from time ``since``): {"events": [...], "cursor": N}."""
        params = {"cursor": cursor, "since": since, "limit": limit, "wait": wait}
        return self._ask(a.EventsOut, "GET", "/v1/events", params=params)

    def vm_event(self, host: str, vm: str, what: str, disks: list[str]) -> dict[str, Any]:
        """Report VM ``vm`` of ``host`` paused for space or running again."""
        body = {"vm": vm, "what": what, "disks": disks}
        return self._ask(a.VmEventOut, "POST", f"/v1/hosts/{host}/vm-events", json=body)

    def health_report(self, stuck: float | None = None) -> dict[str, Any]:
        return self._ask(a.HealthReport, "GET", "/v1/health/report", params={"stuck": stuck})

    def metrics(self) -> str:
        """The Prometheus text the server exposes (admins only)."""
        resp = self.conn.send("GET", "/metrics")
        if resp.status_code != 200:
            self._raise(resp)
        return resp.text

    def operation(self, op_id: str) -> dict[str, Any]:
        return self._ask(a.OperationOut, "GET", f"/v1/ops/{op_id}")

    def arrays(self) -> list[dict[str, Any]]:
        return self._all("/v1/arrays", i.ArrayOut)

    def array_add(self, name: str, backend: str, settings: dict[str, str] | str) -> dict[str, Any]:
        """``settings``: the backend's record; a plain string is a ``dir`` path."""
        record = {"path": settings} if isinstance(settings, str) else settings
        body = {"name": name, "backend": backend, "settings": record}
        return self._ask(i.ArrayOut, "POST", "/v1/arrays", json=body)

    def array(self, ref: str) -> dict[str, Any]:
        return self._ask(i.ArrayDetail, "GET", f"/v1/arrays/{ref}")

    def array_reap(self, ref: str) -> dict[str, Any]:
        return self._ask(i.ReapOut, "POST", f"/v1/arrays/{ref}/reap")

    def array_delete(self, ref: str) -> None:
        self.call("DELETE", f"/v1/arrays/{ref}")

    def containers(self) -> list[dict[str, Any]]:
        return self._all("/v1/containers", i.ContainerOut)

    def container_create(
        self,
        name: str,
        capacity: str | int,
        arrays: list[str] | None = None,
        tenant: str | None = None,
        overcommit: str | float = 1.0,
        reserve: str | None = None,
        alerts: str | None = None,
    ) -> dict[str, Any]:
        return self._ask(
            i.ContainerOut,
            "POST",
            "/v1/containers",
            json={
                "name": name,
                "capacity": capacity,
                "arrays": arrays or None,
                "tenant": tenant,
                "overcommit": overcommit,
                "reserve": reserve,
                "alerts": alerts,
            },
        )

    def container_set(
        self,
        ref: str,
        capacity: str | int | None = None,
        overcommit: str | float | None = None,
        reserve: str | None = None,
        alerts: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "capacity": capacity,
            "overcommit": overcommit,
            "reserve": reserve,
            "alerts": alerts,
        }
        return self._ask(
            i.ContainerDetail,
            "PATCH",
            f"/v1/containers/{ref}",
            json={k: v for k, v in body.items() if v is not None},
        )

    def container_refresh(self, ref: str) -> dict[str, Any]:
        return self._ask(i.ContainerDetail, "POST", f"/v1/containers/{ref}/refresh")

    def container(self, ref: str) -> dict[str, Any]:
        return self._ask(i.ContainerDetail, "GET", f"/v1/containers/{ref}")

    def container_delete(self, ref: str) -> None:
        self.call("DELETE", f"/v1/containers/{ref}")

    def vvols(
        self, container: str | None = None, datastore: str | None = None
    ) -> list[dict[str, Any]]:
        return self._all("/v1/vvols", v.VvolOut, {"container": container, "datastore": datastore})

    def vvol_create(
        self,
        container: str | None,
        size: str | int,
        type: str = "data",
        name: str | None = None,
        metadata: dict[str, str] | None = None,
        op_id: str | None = None,
        datastore: str | None = None,
        pe: str | None = None,
    ) -> dict[str, Any]:
        """Create a vvol; with ``pe``, only on an array that endpoint can serve."""
        body = {
            "container": container,
            "size": size,
            "type": type,
            "name": name,
            "metadata": metadata,
            "op_id": op_id,
            "datastore": datastore,
            "pe": pe,
        }
        return self._ask(
            v.VvolDetail, "POST", "/v1/vvols", json={k: v for k, v in body.items() if v is not None}
        )

    def vvol(self, ref: str) -> dict[str, Any]:
        return self._ask(v.VvolDetail, "GET", f"/v1/vvols/{ref}")

    def vvol_delete(self, ref: str, generation: int | None = None, deferred: bool = False) -> None:
        params: dict[str, Any] = {"generation": generation}
        if deferred:
            params["deferred"] = "true"
        self.call("DELETE", f"/v1/vvols/{ref}", params=params)

    def vvol_extend(
        self, ref: str, size: str | int, generation: int | None = None
    ) -> dict[str, Any]:
        return self._ask(
            v.VvolDetail,
            "POST",
            f"/v1/vvols/{ref}/extend",
            json={"size": size, "generation": generation},
        )

    def vvol_meta(
        self, ref: str, pairs: list[str], generation: int | None = None
    ) -> dict[str, Any]:
        return self._ask(
            v.VvolDetail,
            "POST",
            f"/v1/vvols/{ref}/meta",
            json={"pairs": pairs, "generation": generation},
        )

    def vvol_snapshot(
        self, ref: str, name: str | None = None, op_id: str | None = None
    ) -> dict[str, Any]:
        return self._ask(
            v.VvolDetail, "POST", f"/v1/vvols/{ref}/snapshot", json={"name": name, "op_id": op_id}
        )

    def snapshot_prepare(self, vvols: list[str], names: list[str | None]) -> list[dict[str, Any]]:
        """The catalog half of one snapshot per vvol; ``snapshot_cut`` captures the data
        (all at once) and ``snapshot_commit`` makes them ready."""
        return self._ask(
            list[v.SnapshotPrepared],
            "POST",
            "/v1/snapshot-groups/prepare",
            json={"vvols": vvols, "names": names},
        )

    def snapshot_cut(self, snapshots: list[str]) -> list[dict[str, Any]]:
        return self._ask(
            list[v.SnapshotCut], "POST", "/v1/snapshot-groups/cut", json={"snapshots": snapshots}
        )

    def snapshot_commit(self, snapshots: list[str]) -> list[dict[str, Any]]:
        return self._ask(
            list[v.VvolDetail], "POST", "/v1/snapshot-groups/commit", json={"snapshots": snapshots}
        )

    def snapshot_abort(self, snapshots: list[str]) -> None:
        self.call("POST", "/v1/snapshot-groups/abort", json={"snapshots": snapshots})

    def vvol_clone(
        self,
        ref: str,
        linked: bool = False,
        container: str | None = None,
        name: str | None = None,
        op_id: str | None = None,
    ) -> dict[str, Any]:
        return self._ask(
            v.VvolDetail,
            "POST",
            f"/v1/vvols/{ref}/clone",
            json={"linked": linked, "container": container, "name": name, "op_id": op_id},
        )

    def vvol_revert(
        self, ref: str, to: str, generation: int | None = None, op_id: str | None = None
    ) -> dict[str, Any]:
        return self._ask(
            v.VvolDetail,
            "POST",
            f"/v1/vvols/{ref}/revert",
            json={"to": to, "generation": generation, "op_id": op_id},
        )

    def vvol_move(self, ref: str, container: str, op_id: str | None = None) -> dict[str, Any]:
        return self._ask(
            v.VvolDetail,
            "POST",
            f"/v1/vvols/{ref}/move",
            json={"container": container, "op_id": op_id},
        )

    def vvol_bitmap(
        self, ref: str, base: str | None = None, chunk: str | None = None, method: str | None = None
    ) -> dict[str, Any]:
        return self._ask(
            v.BitmapOut,
            "GET",
            f"/v1/vvols/{ref}/bitmap",
            params={"base": base, "chunk": chunk, "method": method},
        )

    def vvol_read(self, ref: str, offset: int, length: int) -> bytes:
        """Bytes of a vvol's data, from any machine and on any array."""
        if not ref:
            raise InvalidInput(detail="the vvol name or id is empty")
        params = {"offset": offset, "length": length}
        resp = self.conn.send("GET", f"/v1/vvols/{ref}/data", params=params)
        if resp.status_code >= 400:
            self._raise(resp)
        return resp.content

    def vvol_write(self, ref: str, offset: int, data: bytes, zero: int = 0) -> dict[str, Any]:
        """Write into a writable vvol no host has bound (at most 1 MiB a call), or
        with ``zero`` make that many bytes read as zeros."""
        resp = self.conn.send(
            "PUT",
            f"/v1/vvols/{ref}/data",
            params={"offset": offset, "zero": zero},
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
        if resp.status_code >= 400:
            self._raise(resp)
        return self._typed(v.WriteOut, self._json(resp))

    def vvol_copy_diffs(
        self, ref: str, base: str, to: str, op_id: str | None = None
    ) -> dict[str, Any]:
        return self._ask(
            v.CopyDiffsOut,
            "POST",
            f"/v1/vvols/{ref}/copy-diffs",
            json={"base": base, "to": to, "op_id": op_id},
        )

    def hosts(self) -> list[dict[str, Any]]:
        return self._all("/v1/hosts", i.HostOut)

    def host_add(
        self, name: str, iqn: str | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        return self._ask(
            i.HostCreated, "POST", "/v1/hosts", json={"name": name, "iqn": iqn, "tenant": tenant}
        )

    def host_token_rotate(self, name: str) -> dict[str, Any]:
        return self._ask(i.TokenOut, "POST", f"/v1/hosts/{name}/token")

    def host_fence(self, name: str) -> dict[str, Any]:
        return self._ask(i.FenceOut, "POST", f"/v1/hosts/{name}/fence")

    def host_unfence(self, name: str) -> dict[str, Any]:
        return self._ask(i.UnfenceOut, "POST", f"/v1/hosts/{name}/unfence")

    def recover_check(self, host: str, vvols: list[str]) -> dict[str, Any]:
        """May ``host`` start the VM whose vvols these are (nobody unfenced uses them)?"""
        return self._ask(
            i.RecoverCheckOut, "POST", f"/v1/hosts/{host}/recover-check", json={"vvols": vvols}
        )

    def host_nbd_credentials(self, name: str) -> dict[str, Any]:
        return self._ask(i.NbdCredentials, "GET", f"/v1/hosts/{name}/nbd-credentials")

    def tenants(self) -> list[dict[str, Any]]:
        return self._all("/v1/tenants", i.TenantOut)

    def tenant_create(self, name: str) -> dict[str, Any]:
        return self._ask(i.TenantOut, "POST", "/v1/tenants", json={"name": name})

    def tenant_delete(self, name: str) -> None:
        self.call("DELETE", f"/v1/tenants/{name}")

    def admin_token(self, name: str = "admin") -> dict[str, Any]:
        return self._ask(i.TokenOut, "POST", "/v1/admin-tokens", json={"name": name})

    def admin_tokens(self) -> list[dict[str, Any]]:
        return self._all("/v1/admin-tokens", i.TokenInfo)

    def admin_token_revoke(self, name: str) -> dict[str, Any]:
        return self._ask(i.TokenRevoked, "DELETE", f"/v1/admin-tokens/{name}")

    def datastores(self) -> list[dict[str, Any]]:
        return self._all("/v1/datastores", v.DatastoreOut)

    def datastore_create(
        self,
        name: str,
        capacity: str | int,
        containers: list[str] | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        return self._ask(
            v.DatastoreOut,
            "POST",
            "/v1/datastores",
            json={
                "name": name,
                "capacity": capacity,
                "containers": containers or None,
                "tenant": tenant,
            },
        )

    def datastore(self, ref: str) -> dict[str, Any]:
        return self._ask(v.DatastoreOut, "GET", f"/v1/datastores/{ref}")

    def datastore_extend(self, ref: str, capacity: str | int) -> dict[str, Any]:
        return self._ask(
            v.DatastoreOut, "POST", f"/v1/datastores/{ref}/extend", json={"capacity": capacity}
        )

    def datastore_delete(self, ref: str) -> None:
        self.call("DELETE", f"/v1/datastores/{ref}")

    def datastore_resolve(self, ref: str, host: str | None = None) -> dict[str, Any]:
        return self._ask(
            v.DatastoreResolved, "GET", f"/v1/datastores/{ref}/resolve", params={"host": host}
        )

    def host(self, name: str) -> dict[str, Any]:
        return self._ask(i.HostDetail, "GET", f"/v1/hosts/{name}")

    def host_remove(self, name: str) -> None:
        self.call("DELETE", f"/v1/hosts/{name}")

    def replicas(self) -> list[dict[str, Any]]:
        return self._all("/v1/replicas", a.ReplicaOut)

    def pes(self) -> list[dict[str, Any]]:
        return self._all("/v1/pes", i.PeOut)

    def pe_create(
        self,
        name: str,
        protocol: str,
        array: str | None = None,
        portal: str | None = None,
        path: str | None = None,
        node: str | None = None,
    ) -> dict[str, Any]:
        return self._ask(
            i.PeOut,
            "POST",
            "/v1/pes",
            json={
                "name": name,
                "protocol": protocol,
                "array": array,
                "portal": portal,
                "path": path,
                "node": node,
            },
        )

    def pe_evacuate(self, ref: str, to: str) -> list[dict[str, Any]]:
        """Rebind every binding of endpoint ``ref`` to endpoint ``to``."""
        return self._ask(list[b.BindResult], "POST", f"/v1/pes/{ref}/evacuate", json={"to": to})

    def pe(self, ref: str) -> dict[str, Any]:
        return self._ask(i.PeOut, "GET", f"/v1/pes/{ref}")

    def pe_delete(self, ref: str) -> None:
        self.call("DELETE", f"/v1/pes/{ref}")

    def bind(
        self, vvols: list[str], host: str, pe: str | None = None, shared: bool = False
    ) -> list[dict[str, Any]]:
        return self._ask(
            list[b.BindResult],
            "POST",
            "/v1/bind",
            json={"vvols": vvols, "host": host, "pe": pe, "shared": shared},
        )

    def bind_one(
        self, vvol: str, host: str, pe: str | None = None, shared: bool = False
    ) -> dict[str, Any]:
        """Bind one vvol and return its handle, raising its error if it failed."""
        (result,) = self.bind([vvol], host, pe, shared)
        if not result["ok"]:
            raise from_wire(result["error"], 409)
        handle: dict[str, Any] = result["handle"]
        return handle

    def unbind(self, vvols: list[str], host: str, drop_all: bool = False) -> list[dict[str, Any]]:
        return self._ask(
            list[b.UnbindResult],
            "POST",
            "/v1/unbind",
            json={"vvols": vvols, "host": host, "all": drop_all},
        )

    def rebind(self, vvol: str, host: str, pe: str) -> dict[str, Any]:
        return self._ask(
            b.HandleOut, "POST", f"/v1/vvols/{vvol}/rebind", json={"host": host, "pe": pe}
        )

    def bindings(self, host: str | None = None, vvol: str | None = None) -> list[dict[str, Any]]:
        return self._all("/v1/bindings", b.HandleOut, {"host": host, "vvol": vvol})

    def config_put(
        self, vvol: str, document: dict[str, Any], generation: int | None = None
    ) -> dict[str, Any]:
        body = {"document": document, "generation": generation}
        return self._ask(v.ConfigStored, "PUT", f"/v1/vvols/{vvol}/config", json=body)

    def config_get(self, vvol: str) -> dict[str, Any]:
        document: dict[str, Any] = self._ask(v.ConfigOut, "GET", f"/v1/vvols/{vvol}/config")[
            "document"
        ]
        return document

    def config_read(self, vvol: str) -> dict[str, Any]:
        """The document with the generation it was read at (for a compare-and-set put)."""
        return self._ask(v.ConfigOut, "GET", f"/v1/vvols/{vvol}/config")

    # -- per-VM leases (one VM operation at a time) ----------------------------------------
    def lease_acquire(
        self, vvol: str, host: str, op: str, pid: int, ttl: float, dead_epoch: int | None = None
    ) -> dict[str, Any]:
        body = {"host": host, "op": op, "pid": pid, "ttl": ttl, "dead_epoch": dead_epoch}
        return self._ask(b.LeaseOut, "POST", f"/v1/vvols/{vvol}/lease", json=body)

    def lease_renew(self, vvol: str, token: str, ttl: float) -> dict[str, Any]:
        return self._ask(
            b.LeaseOut, "PUT", f"/v1/vvols/{vvol}/lease", json={"token": token, "ttl": ttl}
        )

    def lease_release(self, vvol: str, token: str) -> dict[str, Any]:
        return self._ask(
            b.LeaseReleased, "DELETE", f"/v1/vvols/{vvol}/lease", params={"token": token}
        )

    def lease_show(self, vvol: str) -> dict[str, Any]:
        return self._ask(b.LeaseShown, "GET", f"/v1/vvols/{vvol}/lease")


@lru_cache(maxsize=256)
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def _page_of(item: Any) -> Any:
    """The page model of a listing whose items are ``item``."""
    return Page[item]
