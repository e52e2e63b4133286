"""qemu-storage-daemon (QSD): raw nodes over files or RBD images, exported over
NBD, driven through QMP.

One QSD process, run in the foreground by its supervisor (``qsd_argv``)::

    qmp.sock (QMP) --> node graph                         --> NBD server (unix or tcp)
                       n<30 hex>  raw   (read-only?)      <--  export "name" (writable?)
                         `- #blockNNN  file  /path/vvol.img, locking=off
                       n<30 hex>  raw
                         `- #blockNNN  rbd   pool, namespace, image[, snapshot],
                                             conf, user[, key-secret=k<30 hex>]
                       FUSE exports: node n<30 hex> as a regular file MOUNTPOINT (writable?)
                       objects: tls-creds-x509 (server, verify-peer) + authz-simple (one DN)
                                for an NBD server that only lets in TLS clients it authorizes;
                                secret k<30 hex> (a cephx key for the rbd node of that hash)

Each vvol is a ``raw`` node over an unnamed protocol child (deleted together
with its parent). A ``file`` child has ``locking=off``: it drops QEMU's OFD
byte-range locks on the image so another daemon (or qemu-img) may open the same
file at once; coordinating the writers is then the caller's job. An ``rbd``
child opens the image with librbd (QEMU's own driver); with a keyring the
cephx key goes in a ``secret`` object, never on a command line.
``auto-read-only=off`` makes a read-only request strict: the data is opened
read-only, never reopened read-write. ``nocache`` opens a node with
``cache.direct``: for ``rbd`` QEMU then turns librbd's cache off, so every
write is on the OSDs when it is acknowledged and other librbd clients (the
array's own verbs) read what was written.

A FUSE export (``block-export-add type=fuse``) mounts a node over an existing
regular file; QEMU 7.2 answers attributes with a one-second timeout and opens
without ``direct_io``, so a reader that must see other writers opens the file
with ``O_DIRECT``, and a new size shows within a second of ``block_resize``.

Node names are at most 31 characters and must start with a letter:
``node_name_for(key)`` maps any key to ``"n" + 30 hex digits of sha256(key)``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from . import EndpointError
from .qmp import Qmp

NODE_NAME_MAX = 31
STARTUP_WAIT = 30.0  # s a just started daemon may take to greet on its QMP socket


def node_name_for(key: str) -> str:
    """A stable, valid QEMU node name (31 chars, letter first) for ``key``."""
    return "n" + hashlib.sha256(key.encode()).hexdigest()[: NODE_NAME_MAX - 1]


def qsd_argv(qmp_socket: str, binary: str = "qemu-storage-daemon") -> list[str]:
    """The command line of a foreground QSD whose only monitor is QMP on ``qmp_socket``.

    No ``--daemonize`` and no ``--pidfile``: the caller supervises the process.
    Nodes, exports and the NBD server are all added later over QMP.
    """
    return [
        binary,
        "--chardev",
        f"socket,id=qmp0,path={qmp_socket.replace(',', ',,')},server=on,wait=off",
        "--monitor",
        "chardev=qmp0,mode=control",
    ]


class StorageDaemonApi:
    """Typed calls for one QSD; errors are ``EndpointError(tool="qmp", ...)``."""

    def __init__(self, qmp: Qmp) -> None:
        self.qmp = qmp

    @classmethod
    def connect(cls, qmp_path: str, wait: float = STARTUP_WAIT) -> StorageDaemonApi:
        """Typed calls over the daemon's QMP socket at ``qmp_path``, waiting up to
        ``wait`` s for a daemon that is still starting (on a loaded host the
        greeting can take seconds after the socket appears)."""
        qmp = Qmp(qmp_path)
        qmp.connect(retry_for=wait)
        return cls(qmp)

    # --- NBD server ----------------------------------------------------------

    def start_nbd_server_unix(self, path: str) -> None:
        self.qmp.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": path}})

    def start_nbd_server_tcp(
        self, host: str, port: int, tls_creds: str | None = None, tls_authz: str | None = None
    ) -> None:
        """Listen on HOST:PORT; with ``tls_creds`` (and ``tls_authz``) a client must
        do TLS (and be authorized) before it may list or open anything."""
        addr = {"type": "inet", "data": {"host": host, "port": str(port)}}
        tls = {"tls-creds": tls_creds, "tls-authz": tls_authz}
        self.qmp.cmd("nbd-server-start", addr=addr, **{k: v for k, v in tls.items() if v})

    # --- TLS -----------------------------------------------------------------

    def add_tls_server_creds(self, obj_id: str, directory: str) -> None:
        """``tls-creds-x509`` reading DIR/{ca-cert,server-cert,server-key}.pem and
        requiring a client certificate signed by that CA."""
        self.qmp.cmd(
            "object-add",
            **{"qom-type": "tls-creds-x509", "id": obj_id, "dir": directory},
            endpoint="server",
            **{"verify-peer": True},
        )

    def add_authz(self, obj_id: str, identity: str) -> None:
        """``authz-simple``: the one x509 distinguished name let in."""
        self.qmp.cmd("object-add", **{"qom-type": "authz-simple", "id": obj_id}, identity=identity)

    def set_authz(self, obj_id: str, identity: str) -> None:
        """Let in ``identity`` instead; connections made already stay."""
        self.qmp.cmd("qom-set", path=f"/objects/{obj_id}", property="identity", value=identity)

    def objects(self) -> set[str]:
        """Ids of the user-created objects (``/objects``, made with the first one)."""
        try:
            found = self.qmp.cmd("qom-list", path="/objects")
        except EndpointError:
            return set()
        return {str(o["name"]) for o in found}

    # --- block nodes ---------------------------------------------------------

    @staticmethod
    def file_node_args(node: str, path: str, *, readonly: bool) -> dict[str, Any]:
        common = {"read-only": readonly, "auto-read-only": False, "discard": "unmap"}
        file = {"driver": "file", "filename": path, "locking": "off", **common}
        return {"driver": "raw", "node-name": node, "file": file, **common}

    @staticmethod
    def rbd_node_args(
        node: str,
        rbd: dict[str, Any],
        *,
        readonly: bool,
        key_secret: str | None = None,
        nocache: bool = False,
    ) -> dict[str, Any]:
        """A raw node over an ``rbd`` child. ``rbd`` holds pool, namespace, image,
        snapshot, conf, user (QAPI ``BlockdevOptionsRbd``); empty ones are left out.
        ``nocache``: librbd's cache off (see the module docstring)."""
        common: dict[str, Any] = {"read-only": readonly, "auto-read-only": False}
        common["discard"] = "unmap"
        if nocache:
            common["cache"] = {"direct": True}
        child: dict[str, Any] = {"driver": "rbd", **{k: v for k, v in rbd.items() if v}}
        if key_secret is not None:
            child["key-secret"] = key_secret
            child["auth-client-required"] = ["cephx"]
        return {"driver": "raw", "node-name": node, "file": {**child, **common}, **common}

    @staticmethod
    def export_args(export_id: str, node: str, name: str, *, writable: bool) -> dict[str, Any]:
        return {
            "type": "nbd",
            "id": export_id,
            "node-name": node,
            "name": name,
            "writable": writable,
        }

    @staticmethod
    def fuse_export_args(
        export_id: str, node: str, mountpoint: str, *, writable: bool
    ) -> dict[str, Any]:
        """A FUSE export of ``node`` over the regular file ``mountpoint`` (never
        growable: writes past the end fail; only ``block_resize`` changes the size)."""
        return {
            "type": "fuse",
            "id": export_id,
            "node-name": node,
            "mountpoint": mountpoint,
            "writable": writable,
            "growable": False,
        }

    def add_fuse_export(
        self, export_id: str, node: str, mountpoint: str, *, writable: bool
    ) -> None:
        """Mount ``node`` over ``mountpoint`` (a regular file that exists)."""
        self.qmp.cmd(
            "block-export-add",
            **self.fuse_export_args(export_id, node, mountpoint, writable=writable),
        )

    def add_file_node(self, node: str, path: str, *, readonly: bool) -> None:
        """Open ``path`` as raw node ``node`` (see the module docstring for the options)."""
        self.qmp.cmd("blockdev-add", **self.file_node_args(node, path, readonly=readonly))

    def add_secret(self, obj_id: str, data: str, *, base64: bool = False) -> None:
        """A ``secret`` object holding ``data`` (sent over the QMP socket only).
        ``base64``: ``data`` is base64 of the secret (QEMU's rbd driver hands
        librados the secret base64-encoded again, so a cephx key goes in this way)."""
        fmt = {"format": "base64"} if base64 else {}
        self.qmp.cmd("object-add", **{"qom-type": "secret", "id": obj_id}, data=data, **fmt)

    def del_object(self, obj_id: str) -> None:
        self.qmp.cmd("object-del", id=obj_id)

    def del_node(self, node: str) -> None:
        self.qmp.cmd("blockdev-del", **{"node-name": node})

    def nodes(self) -> list[str]:
        """Names of the nodes we named (QEMU's own ``#block...`` names left out)."""
        found = self.qmp.cmd("query-named-block-nodes", flat=True)
        return [n["node-name"] for n in found if not n["node-name"].startswith("#")]

    def node_sizes(self) -> dict[str, int]:
        """The size each of our named nodes presents (``image.virtual-size``)."""
        found = self.qmp.cmd("query-named-block-nodes", flat=True)
        return {
            n["node-name"]: int(n["image"]["virtual-size"])
            for n in found
            if not n["node-name"].startswith("#")
        }

    def resize(self, node: str, size: int) -> None:
        """Grow (or shrink) the node and its file to ``size`` bytes. QEMU refuses
        while the node is exported over NBD (an NBD export keeps the size it
        started with); a FUSE export shares the permission and shows the new size."""
        self.qmp.cmd("block_resize", **{"node-name": node, "size": size})

    # --- exports -------------------------------------------------------------

    def add_export(self, export_id: str, node: str, name: str, *, writable: bool) -> None:
        """Export ``node`` over the running NBD server as ``name``."""
        self.qmp.cmd(
            "block-export-add", **self.export_args(export_id, node, name, writable=writable)
        )

    def del_export(self, export_id: str, *, force: bool = True, timeout: float = 10.0) -> None:
        """Remove the export and wait until QSD has let go of its node.

        ``block-export-del`` first in ``safe`` mode; if a client is still
        connected and ``force`` is set, again in ``hard`` mode (clients are
        disconnected). Returns once ``BLOCK_EXPORT_DELETED`` arrived, after which
        the node can be deleted.
        """
        match = {"id": export_id}
        self.qmp.discard_events("BLOCK_EXPORT_DELETED", match)
        try:
            self.qmp.cmd("block-export-del", id=export_id, mode="safe")
        except EndpointError:
            export = next((e for e in self.exports() if e["id"] == export_id), None)
            if export is None or not (force or export["shutting-down"]):
                raise
            if not export["shutting-down"]:
                self.qmp.cmd("block-export-del", id=export_id, mode="hard")
        self.qmp.wait_event("BLOCK_EXPORT_DELETED", match, timeout)

    def exports(self) -> list[dict[str, Any]]:
        """``query-block-exports``: ``[{"type", "id", "node-name", "shutting-down"}]``
        (NBD and FUSE exports alike: ``type`` tells them apart)."""
        return list(self.qmp.cmd("query-block-exports"))
