"""One librados connection per RBD array, and the pool's owner marker.

    Cluster(array, settings)
      handle()          the rados.Rados, connected on first use with short timeouts
      ioctx(namespace)  a fresh I/O context on the pool in one RADOS namespace
      marker()          the id written in the pool's ``vvhost.array`` object (None: unmarked)
      claim(array_id)   mark the pool as this array's; refused when another array holds it

librados handles are thread-safe; an I/O context is not shared between threads
here (``set_namespace`` changes it), so every call opens its own.  Errors of the
bindings become ``ArrayOffline`` (no cluster, no pool) or ``BackendError``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import rados

from ..errors import ArrayOffline, BackendError, InUse
from . import rbdnames
from .settings import RbdSettings

CONNECT_TIMEOUT = 10  # seconds until an unreachable cluster counts as offline
MON_OP_TIMEOUT = 10
OSD_OP_TIMEOUT = 60
DEFAULT_CONF = "/etc/ceph/ceph.conf"
STATS_WAIT = 10  # seconds to wait for the space figures of a cluster that just started


class Cluster:
    def __init__(self, array: str, settings: RbdSettings) -> None:
        self.array = array
        self.settings = settings
        self._lock = threading.Lock()
        self._rados: Any = None

    def handle(self) -> Any:
        with self._lock:
            if self._rados is None:
                self._rados = self._connect()
            return self._rados

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
        finally:
            io.close()

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
        cmd = json.dumps({"prefix": prefix, "format": "json", **args})
        ret, out, err = self.handle().mon_command(cmd, b"", timeout=MON_OP_TIMEOUT)
        if ret != 0:
            raise BackendError(array=self.array, detail=f"ceph {prefix}: {err or ret}")
        return json.loads(out)

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
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.shutdown()


def _text(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
