"""RBD images as regular files for a daemon that reads files only (tgtd).

One ``qemu-storage-daemon`` per iSCSI endpoint, started when the first RBD
source is attached, opens each image with QEMU's librbd driver and mounts it
over a regular file with a FUSE export::

    STATE/pe/<pe>/qsd/        pid, cmdline, daemon.log, qmp.sock   (pe/proc.py)
    STATE/pe/<pe>/fuse/
      f<30 hex>.raw           mountpoint of export f<30 hex> (node of the same name)
                              = hash of "rbd:CONF:POOL/NS/IMAGE@SNAP" (+ "#ro")
    tgtd LUN backing path     /proc/<qsd pid>/root/STATE/pe/<pe>/fuse/f<30 hex>.raw

The path handed to tgtd goes through ``/proc/<qsd pid>/root``: whatever mount
namespace tgtd runs in (a control plane in a private namespace that was
restarted adopts daemons of another one), it sees the mounts of the daemon
that serves them, never the empty file under a mount it cannot see, and a path
of a daemon that died resolves to nothing. A new daemon means new paths, which
is how the endpoint tells LUNs that must be reopened (``current``).

Nodes are opened with librbd's cache off (``nocache``) and tgtd opens the file
with O_DIRECT (QEMU 7.2's FUSE export leaves the kernel page cache on): reads
always reach the image, so writes of other clients (the array's own verbs,
another endpoint) are never hidden behind stale pages. Read-only sources (RBD
snapshots, read-only bindings) get a read-only node and a read-only export.

A FUSE mount outlives a daemon killed hard (reads fail with ENOTCONN). Before
a new daemon is spawned, every FUSE mount under ``fuse/`` is unmounted lazily,
in this process's mount namespace and in tgtd's (entered with ``nsenter``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable

from ..arrays.sources import RbdSource
from ..tools import EndpointError
from ..tools.qsd import StorageDaemonApi, node_name_for, qsd_argv
from .cephkeyring import read_key
from .nbd import source_id
from .proc import Daemon

PREFIX = "f"  # export ids, node names and mountpoint names: "f" + 30 hex digits
SECRET_PREFIX = "s"  # the cephx key of node f<hash> is secret s<hash>
SIZE_WAIT = 3.0  # QEMU answers FUSE attributes with a 1 s timeout


def export_name(src: RbdSource, readonly: bool) -> str:
    key = source_id(src) + ("#ro" if readonly else "")
    return PREFIX + node_name_for(key)[1:]


def fuse_mounts(pid: int | str, under: str) -> list[str]:
    """Mount points of FUSE file systems under ``under`` in the mount namespace of
    process ``pid`` ("self" for this one)."""
    found = []
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields, _, fs = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not fs.startswith("fuse"):
            continue
        point = parts[4].encode().decode("unicode_escape")  # \040 and friends
        if point.startswith(under.rstrip("/") + "/"):
            found.append(point)
    return found


def same_mount_ns(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return True  # gone: nothing to enter


def unmount_lazily(point: str, ns_pid: int | None = None) -> None:
    """``umount -l`` here, or in the mount namespace of ``ns_pid``."""
    argv = ["umount", "-l", point]
    if ns_pid is not None:
        argv = ["nsenter", "-t", str(ns_pid), "-m", "--", *argv]
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)


class FuseExports:
    """The FUSE exports of one endpoint and the QSD that serves them."""

    def __init__(self, owner: str, pe_rundir: str, peer_pid: Callable[[], int | None]) -> None:
        self.owner = owner
        self.fusedir = os.path.join(pe_rundir, "fuse")
        rundir = os.path.join(pe_rundir, "qsd")
        self.qmp_path = os.path.join(rundir, "qmp.sock")
        self.daemon = Daemon(
            f"qsd-{owner}", qsd_argv(self.qmp_path), rundir, ready=self._socket_ready
        )
        self.peer_pid = peer_pid  # tgtd's, whose mount namespace may differ from ours
        self._lock = threading.RLock()
        self._api: StorageDaemonApi | None = None
        self._exports: set[str] = set()
        self._nodes: set[str] = set()
        self._secrets: set[str] = set()

    # -- the daemon -----------------------------------------------------------------------
    def _socket_ready(self) -> bool:
        return os.path.exists(self.qmp_path)

    def wanted(self) -> bool:
        """A daemon was started here and not stopped (it must run, or be restarted)."""
        return os.path.exists(os.path.join(self.daemon.rundir, "pid"))

    def alive(self) -> bool:
        return self.daemon.alive()

    @property
    def api(self) -> StorageDaemonApi:
        if self._api is None:
            self._api = StorageDaemonApi.connect(self.qmp_path)
        return self._api

    def start(self) -> None:
        """Adopt the running daemon, or sweep dead mounts and spawn a new one."""
        with self._lock:
            if self.daemon.alive() and self._api is not None:
                return
            self._close()
            os.makedirs(self.fusedir, exist_ok=True)
            before = self.daemon.pid if self.daemon.alive() else None
            self.daemon.start()
            if not self.daemon.adopted and self.daemon.pid != before:  # spawned just now
                self.sweep()
            self._load()

    def stop(self) -> None:
        """Stop the daemon (it unmounts its exports), then anything it left mounted."""
        with self._lock:
            self._close()
            self.daemon.stop()
            self.sweep()
            self._remove_files(set())

    def sweep(self) -> None:
        """Unmount the FUSE mounts under ``fuse/`` that no live daemon of ours serves:
        all of them, as this is called only with no daemon or a fresh one."""
        peer = self.peer_pid()
        for point in fuse_mounts("self", self.fusedir):
            unmount_lazily(point)
        if peer is not None and not same_mount_ns(peer):
            for point in fuse_mounts(peer, self.fusedir):
                unmount_lazily(point, peer)

    def _load(self) -> None:
        fuse = [e for e in self.api.exports() if e.get("type") == "fuse"]
        self._exports = {str(e["id"]) for e in fuse if str(e["id"]).startswith(PREFIX)}
        self._nodes = {n for n in self.api.nodes() if n.startswith(PREFIX)}
        self._secrets = {o for o in self.api.objects() if o.startswith(SECRET_PREFIX)}

    def _close(self) -> None:
        if self._api is not None:
            self._api.qmp.close()
            self._api = None
        self._exports, self._nodes, self._secrets = set(), set(), set()

    # -- paths ------------------------------------------------------------------------------
    def mountpoint(self, name: str) -> str:
        return os.path.join(self.fusedir, f"{name}.raw")

    def path(self, name: str) -> str | None:
        """Where tgtd opens export ``name`` now (None: no daemon serves it)."""
        pid = self.daemon.pid
        if pid is None or not self.daemon.alive():
            return None
        return f"/proc/{pid}/root{self.mountpoint(name)}"

    def name_in(self, path: str | None) -> str | None:
        """The export a LUN's backing ``path`` names, whichever daemon it was for."""
        if not path:
            return None
        head, _, base = path.rpartition("/")
        name = base.removesuffix(".raw")
        if head.endswith(self.fusedir) and name.startswith(PREFIX) and base.endswith(".raw"):
            return name
        return None

    # -- exports ----------------------------------------------------------------------------
    def provide(self, src: RbdSource, readonly: bool, size: int) -> str:
        """Serve ``src`` as a file of ``size`` bytes (grown when the image grew) and
        return the path tgtd opens; waits until the file shows that size."""
        with self._lock:
            self.start()
            name = export_name(src, readonly)
            try:
                if name not in self._exports:
                    self._add(name, src, readonly)
                shown = self.api.node_sizes().get(name)
                if shown is not None and shown < size:
                    self.api.resize(name, size)
            except EndpointError:
                self._load()
                self.release(set())
                raise
            path = self.path(name)
            assert path is not None
            self._wait_size(path, size)
            return path

    def _add(self, name: str, src: RbdSource, readonly: bool) -> None:
        if name not in self._nodes:
            secret = None
            if src.keyring:
                secret = SECRET_PREFIX + name[len(PREFIX) :]
                if secret in self._secrets:
                    self.api.del_object(secret)
                    self._secrets.discard(secret)
                self.api.add_secret(secret, read_key(src.keyring, src.user), base64=True)
                self._secrets.add(secret)
            rbd = {
                "pool": src.pool,
                "namespace": src.namespace,
                "image": src.image,
                "snapshot": src.snap,
                "conf": src.conf,
                "user": src.user,
            }
            args = StorageDaemonApi.rbd_node_args(
                name, rbd, readonly=readonly, key_secret=secret, nocache=True
            )
            self.api.qmp.cmd("blockdev-add", **args)
            self._nodes.add(name)
        point = self.mountpoint(name)
        try:
            with open(os.open(point, os.O_WRONLY | os.O_CREAT, 0o600), "wb"):
                pass
        except OSError as exc:
            raise EndpointError(
                tool=f"qsd-{self.owner}", detail=f"cannot make {point}: {exc.strerror or exc}"
            ) from None
        self.api.add_fuse_export(name, name, point, writable=not readonly)
        self._exports.add(name)

    def _wait_size(self, path: str, size: int) -> None:
        deadline = time.monotonic() + SIZE_WAIT
        while True:
            try:
                shown: int | str = os.stat(path).st_size
            except OSError as exc:
                shown = exc.strerror or str(exc)
            if shown == size:
                return
            if time.monotonic() > deadline:
                raise EndpointError(
                    tool=f"qsd-{self.owner}",
                    detail=f"{path} shows {shown} bytes, not {size}, after {SIZE_WAIT:g}s",
                )
            time.sleep(0.05)

    def release(self, used: set[str]) -> None:
        """Remove every export (and its node, key and mountpoint) not in ``used``."""
        with self._lock:
            if self._api is None and not self.daemon.alive():
                return
            for name in sorted(self._exports - used):
                self.api.del_export(name)
                self._exports.discard(name)
            for name in sorted(self._nodes - self._exports):
                self.api.del_node(name)
                self._nodes.discard(name)
            for secret in sorted(self._secrets):
                if PREFIX + secret[len(SECRET_PREFIX) :] not in self._nodes:
                    self.api.del_object(secret)
                    self._secrets.discard(secret)
            self._remove_files(self._exports)

    def _remove_files(self, keep: set[str]) -> None:
        """Delete the mountpoint files of exports that are gone."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.fusedir):
                name = entry.removesuffix(".raw")
                if entry.endswith(".raw") and name.startswith(PREFIX) and name not in keep:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.fusedir, entry))
