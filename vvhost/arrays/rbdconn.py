"""One librados connection per RBD array, and the pool's owner marker.

    Cluster(array, settings)
      handle()          the rados.Rados, connected on first use with short timeouts
      ioctx(namespace)  a fresh I/O context on the pool in one RADOS namespace
      marker()          the id written in the pool's ``vvhost.array`` object (None: unmarked)
      claim(array_id)   mark the pool as this array's; refused when another array holds it

librados handles are thread-safe; an I/O context is not shared between threads
here (``set_namespace`` changes it), so every call opens its own.  Errors of the
bindings become ``ArrayOffline`` (no cluster, no pool) or ``BackendError``.

The control plane hears about each connection (``ClientWatch``), off the I/O path:

    handle()  connect ─▶ clients.connected(array_id, IP:PORT/NONCE) ─▶ used
                              └ raises (a fenced replica): shut down, nothing sent
    ioctx()   a call fails with EBLOCKLISTED (the cluster cut this client off):
              the handle is dropped (the next call connects anew: a new nonce,
              recorded again) ─▶ clients.cut_off(...) may raise instead (fenced)
    close()   shutdown ─▶ clients.closed(...)

A dropped handle is shut down only at ``close``: calls may still be using it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import rados
import rbd

from ..errors import ArrayOffline, BackendError, InUse
from ..tools.ceph import entity_addr
from . import rbdnames
from .base import ClientWatch
from .settings import RbdSettings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  # seconds until an unreachable cluster counts as offline
MON_OP_TIMEOUT = 10
OSD_OP_TIMEOUT = 60
DEFAULT_CONF = "/etc/ceph/ceph.conf"
STATS_WAIT = 10  # seconds to wait for the space figures of a cluster that just started
_BLOCKLISTED = (errno.ESHUTDOWN, -errno.ESHUTDOWN)  # EBLOCKLISTED, either sign


class Cluster:
    def __init__(
        self,
        array: str,
        settings: RbdSettings,
        array_id: str | None = None,
        clients: ClientWatch | None = None,
    ) -> None:
        self.array = array
        self.settings = settings
        self.array_id = array_id
        self.clients = clients if array_id is not None else None
        self._lock = threading.Lock()
        self._rados: Any = None
        self._addrs: dict[int, str] = {}  # id of each handle (current and dead) -> its address
        self._dead: list[Any] = []  # handles the cluster cut off, shut down at close

    def handle(self) -> Any:
        with self._lock:
            if self._rados is None:
                handle = self._connect()
                addr = entity_addr(str(handle.get_addrs()))
                if self.clients is not None and self.array_id is not None:
                    try:
                        self.clients.connected(self.array_id, addr)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            handle.shutdown()
                        raise
                self._rados = handle
                self._addrs[id(handle)] = addr
            return self._rados

    def address(self) -> str | None:
        """This process's client address on the cluster (None: not connected)."""
        with self._lock:
            return None if self._rados is None else self._addrs.get(id(self._rados))

    def _connect(self) -> Any:
        conf = {
            "client_mount_timeout": str(CONNECT_TIMEOUT),
            "rados_mon_op_timeout": str(MON_OP_TIMEOUT),
            "rados_osd_op_timeout": str(OSD_OP_TIMEOUT),
            "rbd_default_clone_format": "2",
            "admin_socket": "",  # several clients in one process must not share one
        }
        if self.settings.keyring:
            conf["keyring"] = self.settings.keyring
        handle = None
        try:
            handle = rados.Rados(
                conffile=self.settings.conf or DEFAULT_CONF,
                rados_id=self.settings.user or "admin",
                conf=conf,
            )
            handle.connect(timeout=CONNECT_TIMEOUT)
        except (rados.Error, OSError) as exc:
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.shutdown()
            raise ArrayOffline(
                array=self.array, reason=f"cannot reach the ceph cluster: {_text(exc)}"
            ) from None
        return handle

    @contextlib.contextmanager
    def ioctx(self, namespace: str = "") -> Iterator[Any]:
        handle = self.handle()
        try:
            io = handle.open_ioctx(self.settings.pool)
        except rados.ObjectNotFound:
            raise ArrayOffline(
                array=self.array, reason=f"pool {self.settings.pool!r} does not exist"
            ) from None
        except rados.Error as exc:
            raise ArrayOffline(array=self.array, reason=_text(exc)) from None
        try:
            io.set_namespace(namespace)
            yield io
        except BaseException as exc:
            if blocklisted(exc):
                self._cut_off(handle)
            raise
        finally:
            io.close()

    def _cut_off(self, handle: Any) -> None:
        """The cluster blocklisted ``handle``: never use it again (a later call
        connects anew), and tell the control plane, which may raise instead."""
        with self._lock:
            addr = self._addrs.get(id(handle))
            if self._rados is handle:
                self._rados = None
                self._dead.append(handle)
                log.warning("array %s: the cluster blocklisted client %s", self.array, addr)
        if self.clients is not None and self.array_id is not None and addr is not None:
            self.clients.cut_off(self.array_id, addr)

    def marker(self) -> str | None:
        with self.ioctx() as io:
            try:
                return bytes(io.read(rbdnames.MARKER, 256)).decode().strip() or None
            except rados.ObjectNotFound:
                return None
            except rados.Error as exc:
                raise BackendError(
                    array=self.array, detail=f"reading the pool marker: {exc}"
                ) from None

    def claim(self, array_id: str) -> None:
        """Write ``array_id`` into the pool's marker unless another array's id is there."""
        owner = self.marker()
        if owner is None:
            with self.ioctx() as io, rados.WriteOpCtx() as op:
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
                op.write_full(array_id.encode())
                try:
                    io.operate_write_op(op, rbdnames.MARKER)
                except rados.ObjectExists:
                    pass  # someone else was quicker: read who
                except rados.Error as exc:
                    raise BackendError(
                        array=self.array, detail=f"marking the pool: {exc}"
                    ) from None
            owner = self.marker()
        if owner != array_id:
            raise InUse(kind="pool", ref=self.settings.pool, reason=f"it belongs to array {owner}")

    def unclaim(self, array_id: str) -> None:
        """Remove the pool's marker if it is ``array_id``'s."""
        if self.marker() != array_id:
            return
        with self.ioctx() as io:
            try:
                io.remove_object(rbdnames.MARKER)
            except rados.ObjectNotFound:
                pass
            except rados.Error as exc:
                raise BackendError(array=self.array, detail=f"unmarking the pool: {exc}") from None

    def mon(self, prefix: str, **args: Any) -> Any:
        """A monitor command's JSON answer."""
        return json.loads(self.command({"prefix": prefix, "format": "json", **args}))

    def command(self, cmd: dict[str, Any]) -> bytes:
        """Send one monitor command (``{"prefix": ..., args}``); its raw answer."""
        try:
            ret, out, err = self.handle().mon_command(json.dumps(cmd), b"", timeout=MON_OP_TIMEOUT)
        except rados.Error as exc:
            raise BackendError(array=self.array, detail=f"ceph {cmd['prefix']}: {exc}") from None
        if ret != 0:
            detail = err or errno.errorcode.get(-ret, str(ret))
            raise BackendError(array=self.array, detail=f"ceph {cmd['prefix']}: {detail}")
        return bytes(out)

    def free_bytes(self) -> int:
        """What the pool can still take (``ceph df`` max_avail)."""
        pool = self.settings.pool
        df = self.mon("df")
        deadline = time.monotonic() + STATS_WAIT
        while not df["stats"]["total_bytes"] and time.monotonic() < deadline:
            time.sleep(0.5)  # a cluster that just started has not reported its space yet
            df = self.mon("df")
        for found in df.get("pools", []):
            if found.get("name") == pool and int(found["stats"]["max_avail"]) > 0:
                return int(found["stats"]["max_avail"])
        # a pool the manager has not measured yet: raw free space over its replica count
        copies = int(self.mon("osd pool get", pool=pool, var="size")["size"])
        raw = int(self.handle().get_cluster_stats()["kb_avail"]) * 1024
        return raw // max(copies, 1)

    def close(self) -> None:
        with self._lock:
            handle, self._rados = self._rados, None
            addr = self._addrs.get(id(handle)) if handle is not None else None
            dead, self._dead = self._dead, []
            self._addrs = {}
        for old in [*dead, handle]:
            if old is not None:
                with contextlib.suppress(Exception):
                    old.shutdown()
        if handle is not None and addr is not None and self.clients is not None:
            try:
                self.clients.closed(self.array_id or "", addr)
            except Exception as exc:  # noqa: BLE001 - a stale record is only blocklisted later
                log.info("array %s: client %s not forgotten: %s", self.array, addr, exc)


def blocklisted(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) says the cluster blocklisted
    this client: EBLOCKLISTED, which is ESHUTDOWN."""
    seen: BaseException | None = exc
    for _depth in range(8):
        if seen is None:
            return False
        code = getattr(seen, "errno", None)
        if isinstance(seen, (rados.Error, rbd.Error)) and code in _BLOCKLISTED:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _text(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
