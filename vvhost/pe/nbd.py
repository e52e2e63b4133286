"""The ``nbd`` endpoint: one ``qemu-storage-daemon`` per PE, driven over QMP.

    qemu-storage-daemon (QMP on RUNDIR/qmp.sock)
      NBD server on RUNDIR/nbd.sock (or TCP HOST:PORT)
      block node  n<hash(source)>   raw <- file ARRAY/vvols/<vvol>.raw  (locking off)
                                    raw <- rbd  POOL/NAMESPACE/IMAGE[@SNAP] (librbd)
        export    vv-<vvol-id>.<host>  (export id = export name) writable unless a snapshot

The node is named from the vvol's data source (``source_id``: the file path,
or ``rbd:CONF:POOL/NS/IMAGE@SNAP``), so it is the same across restarts and for
every binding of one vvol.

Bindings of one vvol for several hosts share its block node; the node goes
when its last export does.  A host reaches an export as
``nbd+unix:///<export>?socket=<nbd.sock>`` or ``nbd://HOST:PORT/<export>``.
On TCP the server always runs with TLS (``ServerTls``: x509 credentials with
verify-peer and an authz-simple object naming the one client DN let in); the
``nbd`` endpoint with a portal (pe/nbdtls.py) runs one such daemon per host.

An NBD export has the size its node had when it was added, QEMU refuses to
resize a node while it is exported, and an NBD client learns the size when it
connects. After a vvol grew, ``refresh`` removes the node's exports, each only
if no client is connected (cutting a client off would fail its I/O), resizes
the node to the data's size and adds the exports again under the same names.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..arrays.sources import DataSource, FileSource
from ..errors import VvhostError
from ..tools import EndpointError
from ..tools.qsd import StorageDaemonApi, node_name_for, qsd_argv
from .base import Attachment
from .cephkeyring import read_key
from .proc import Daemon

T = TypeVar("T")
NODE_PREFIX = "n"  # node_name_for() names: "n" + 30 hex digits
SECRET_PREFIX = "k"  # the cephx key of node n<hash> is secret k<hash>


def source_id(source: DataSource) -> str:
    """What names a vvol's data for the daemon: a file's path, an RBD image's spec
    with the cluster's conf (the same image name in two clusters is two images)."""
    if isinstance(source, FileSource):
        return source.path
    return f"rbd:{source.conf or ''}:{source.label()}"


def node_of(a: Attachment) -> str:
    return node_name_for(source_id(a.source))


def secret_of(node: str) -> str:
    return SECRET_PREFIX + node[len(NODE_PREFIX) :]


def node_args(node: str, a: Attachment) -> dict[str, Any]:
    """``blockdev-add`` arguments for attachment ``a``'s data (see tools/qsd.py)."""
    src = a.source
    if isinstance(src, FileSource):
        return StorageDaemonApi.file_node_args(node, src.path, readonly=a.readonly)
    rbd = {
        "pool": src.pool,
        "namespace": src.namespace,
        "image": src.image,
        "snapshot": src.snap,
        "conf": src.conf,
        "user": src.user,
    }
    secret = secret_of(node) if src.keyring else None
    return StorageDaemonApi.rbd_node_args(node, rbd, readonly=a.readonly, key_secret=secret)


TLS_ID = "vvtls"  # the daemon's tls-creds-x509 object
AUTHZ_ID = "vvauthz"  # its authz-simple object


@dataclass(frozen=True)
class ServerTls:
    """TLS for a TCP NBD server: the server credentials' directory and the one
    client identity (x509 DN) let in, read again on each start."""

    creds_dir: str
    identity: Callable[[], str]


def _serialised(method: Callable[..., T]) -> Callable[..., T]:
    """One QMP conversation at a time: the monitor serves a single client, and the
    supervisor and request threads both drive this endpoint."""

    @functools.wraps(method)
    def wrapper(self: NbdEndpoint, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class NbdEndpoint:
    protocol = "nbd"

    def __init__(
        self, name: str, rundir: str, portal: str | None = None, tls: ServerTls | None = None
    ) -> None:
        self.name = name
        self.rundir = rundir
        self.portal = portal
        self.tls = tls
        self.qmp_path = os.path.join(rundir, "qmp.sock")
        self.nbd_path = os.path.join(rundir, "nbd.sock")
        self.daemon = Daemon(
            f"qsd-{name}",
            qsd_argv(self.qmp_path),
            rundir,
            ready=lambda: os.path.exists(self.qmp_path),
        )
        self._lock = threading.RLock()
        self._api: StorageDaemonApi | None = None
        self._exports: dict[str, str] = {}  # export id -> block node
        self._nodes: set[str] = set()
        self._secrets: set[str] = set()

    @property
    def api(self) -> StorageDaemonApi:
        if self._api is None:
            self._api = StorageDaemonApi.connect(self.qmp_path)
        return self._api

    @_serialised
    def start(self) -> None:
        os.makedirs(self.rundir, exist_ok=True)
        self._close()
        self.daemon.start()
        try:
            if self.portal:
                host, _, port = self.portal.rpartition(":")
                self.api.start_nbd_server_tcp(host, int(port), *self._tls_objects())
            else:
                self.api.start_nbd_server_unix(self.nbd_path)
        except EndpointError:
            if not self.daemon.adopted:  # an adopted daemon already serves NBD
                raise
        if self.tls is not None:  # also an adopted daemon: the identity may have changed
            self.api.set_authz(AUTHZ_ID, self.tls.identity())
        self._load()

    def _tls_objects(self) -> tuple[str | None, str | None]:
        """Add the TLS credentials and authorization objects (once per daemon)."""
        if self.tls is None:
            return None, None
        have = self.api.objects()
        if TLS_ID not in have:
            self.api.add_tls_server_creds(TLS_ID, self.tls.creds_dir)
        if AUTHZ_ID not in have:
            self.api.add_authz(AUTHZ_ID, self.tls.identity())
        return TLS_ID, AUTHZ_ID

    @_serialised
    def authorize(self, identity: str) -> None:
        """Let in only ``identity`` from now on (clients connected already stay)."""
        self.api.set_authz(AUTHZ_ID, identity)

    def _load(self) -> None:
        """Learn what the daemon holds; from then on our own calls keep this current
        (only this endpoint drives the daemon), so attach/detach need no queries."""
        self._exports = {str(e["id"]): str(e["node-name"]) for e in self.api.exports()}
        self._nodes = {n for n in self.api.nodes() if n.startswith(NODE_PREFIX)}
        self._secrets = {o for o in self.api.objects() if o.startswith(SECRET_PREFIX)}

    def _close(self) -> None:
        if self._api is not None:
            self._api.qmp.close()
            self._api = None
        self._exports = {}
        self._nodes = set()
        self._secrets = set()

    @_serialised
    def stop(self) -> None:
        self._close()
        self.daemon.stop()

    def alive(self) -> bool:
        return self.daemon.alive()

    @_serialised
    def attach(self, a: Attachment) -> None:
        if a.key in self._exports:
            return
        node = node_of(a)
        assert node.startswith(NODE_PREFIX)
        try:
            if node not in self._nodes:
                self._add_secret(node, a)
                self.api.qmp.cmd("blockdev-add", **node_args(node, a))
                self._nodes.add(node)
            self.api.add_export(a.key, node, a.key, writable=not a.readonly)
            self._exports[a.key] = node
        except EndpointError:
            self._load()
            self._prune()
            raise

    @_serialised
    def attach_many(self, atts: list[Attachment]) -> dict[str, VvhostError]:
        """Attach a batch with pipelined QMP: all new nodes, then all exports."""
        todo = [a for a in atts if a.key not in self._exports]
        nodes = {node_of(a): a for a in todo}
        new_nodes = [(n, a) for n, a in nodes.items() if n not in self._nodes]
        failed: dict[str, VvhostError] = {}
        for node, a in new_nodes:
            try:
                self._add_secret(node, a)
            except VvhostError as exc:
                failed.update({b.key: exc for b in todo if node_of(b) == node})
        new_nodes = [(n, a) for n, a in new_nodes if a.key not in failed]
        calls = [("blockdev-add", node_args(n, a)) for n, a in new_nodes]
        for (node, _a), reply in zip(new_nodes, self.api.qmp.cmd_many(calls), strict=True):
            if isinstance(reply, EndpointError):
                failed.update({a.key: reply for a in todo if node_of(a) == node})
            else:
                self._nodes.add(node)
        todo = [a for a in todo if a.key not in failed]
        calls = [
            (
                "block-export-add",
                StorageDaemonApi.export_args(a.key, node_of(a), a.key, writable=not a.readonly),
            )
            for a in todo
        ]
        for a, reply in zip(todo, self.api.qmp.cmd_many(calls), strict=True):
            if isinstance(reply, EndpointError):
                failed[a.key] = reply
            else:
                self._exports[a.key] = node_of(a)
        if failed:
            self._prune()
        return failed

    @_serialised
    def detach(self, key: str) -> None:
        try:
            if key in self._exports:
                self.api.del_export(key)
                del self._exports[key]
            self._prune()
        except EndpointError:
            self._load()
            raise

    def _add_secret(self, node: str, a: Attachment) -> None:
        """The cephx key of an RBD node whose source names a keyring (replaced if a
        crash left one behind)."""
        src = a.source
        if isinstance(src, FileSource) or not src.keyring:
            return
        key = read_key(src.keyring, src.user)
        secret = secret_of(node)
        if secret in self._secrets:
            self.api.del_object(secret)
            self._secrets.discard(secret)
        self.api.add_secret(secret, key, base64=True)
        self._secrets.add(secret)

    def _prune(self) -> None:
        """Drop block nodes no export uses any more (and their keys)."""
        for node in sorted(self._nodes - set(self._exports.values())):
            self.api.del_node(node)
            self._nodes.discard(node)
            if secret_of(node) in self._secrets:
                self.api.del_object(secret_of(node))
                self._secrets.discard(secret_of(node))

    @_serialised
    def holds(self, source: DataSource) -> bool:
        """Whether the daemon has ``source`` open now (a block node reads it)."""
        if not self.daemon.alive():
            return False
        self._load()
        return node_name_for(source_id(source)) in self._nodes

    @_serialised
    def present(self) -> set[str]:
        self._load()
        return set(self._exports)

    @_serialised
    def refresh(self, a: Attachment) -> None:
        node = node_of(a)
        size = a.size
        if self.api.node_sizes().get(node, size) == size:
            return
        removed: list[str] = []
        try:
            for key in sorted(k for k, n in self._exports.items() if n == node):
                self._del_unused_export(key)
                removed.append(key)
            self.api.resize(node, size)
        finally:
            self._readd(node, removed, writable=not a.readonly)

    def _del_unused_export(self, key: str) -> None:
        try:
            self.api.del_export(key, force=False)
        except EndpointError as exc:
            if any(e["id"] == key for e in self.api.exports()):
                raise EndpointError(
                    tool="qemu-storage-daemon",
                    detail=f"export {key} has a connected client and QEMU cannot grow an "
                    "export in use, so it keeps its old size (extend again to the same size "
                    "once its clients have disconnected)",
                ) from exc
            raise
        del self._exports[key]

    def _readd(self, node: str, keys: list[str], *, writable: bool) -> None:
        try:
            for key in keys:
                self.api.add_export(key, node, key, writable=writable)
                self._exports[key] = node
        except EndpointError:
            self._load()
            raise

    @_serialised
    def stale(self, atts: list[Attachment]) -> list[str]:
        sizes = self.api.node_sizes()
        out = []
        for a in atts:
            shown = sizes.get(node_of(a))
            if shown is not None and shown != a.size:
                out.append(a.key)
        return out

    def handle(self, a: Attachment) -> dict[str, Any]:
        if self.portal:
            uri = f"nbd://{self.portal}/{a.key}"
        else:
            uri = f"nbd+unix:///{a.key}?socket={self.nbd_path}"
        return {"uri": uri, "export": a.key, "socket": None if self.portal else self.nbd_path}
