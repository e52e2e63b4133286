"""The ``nbd`` endpoint: one ``qemu-storage-daemon`` per PE, driven over QMP.

    qemu-storage-daemon (QMP on RUNDIR/qmp.sock)
      NBD server on RUNDIR/nbd.sock (or TCP HOST:PORT)
      block node  n<hash(vvol path)>   raw <- file ARRAY/vvols/<vvol>.raw  (locking off)
        export    vv-<vvol-id>.<host>  (export id = export name) writable unless a snapshot

Bindings of one vvol for several hosts share its block node; the node goes
when its last export does.  A host reaches an export as
``nbd+unix:///<export>?socket=<nbd.sock>`` or ``nbd://HOST:PORT/<export>``.
"""

from __future__ import annotations

import os
from typing import Any

from ..tools import EndpointError
from ..tools.qmp import Qmp
from ..tools.qsd import StorageDaemonApi, node_name_for, qsd_argv
from .base import Attachment
from .proc import Daemon

NODE_PREFIX = "n"  # node_name_for() names: "n" + 30 hex digits


class NbdEndpoint:
    protocol = "nbd"

    def __init__(self, name: str, rundir: str, portal: str | None = None) -> None:
        self.name = name
        self.rundir = rundir
        self.portal = portal
        self.qmp_path = os.path.join(rundir, "qmp.sock")
        self.nbd_path = os.path.join(rundir, "nbd.sock")
        self.daemon = Daemon(
            f"qsd-{name}",
            qsd_argv(self.qmp_path),
            rundir,
            ready=lambda: os.path.exists(self.qmp_path),
        )
        self._api: StorageDaemonApi | None = None

    @property
    def api(self) -> StorageDaemonApi:
        if self._api is None:
            qmp = Qmp(self.qmp_path)
            qmp.connect()
            self._api = StorageDaemonApi(qmp)
        return self._api

    def start(self) -> None:
        os.makedirs(self.rundir, exist_ok=True)
        self._close()
        self.daemon.start()
        try:
            if self.portal:
                host, _, port = self.portal.rpartition(":")
                self.api.start_nbd_server_tcp(host, int(port))
            else:
                self.api.start_nbd_server_unix(self.nbd_path)
        except EndpointError:
            if not self.daemon.adopted:  # an adopted daemon already serves NBD
                raise

    def _close(self) -> None:
        if self._api is not None:
            self._api.qmp.close()
            self._api = None

    def stop(self) -> None:
        self._close()
        self.daemon.stop()

    def alive(self) -> bool:
        return self.daemon.alive()

    def attach(self, a: Attachment) -> None:
        node = node_name_for(a.path)
        assert node.startswith(NODE_PREFIX)
        if node not in self.api.nodes():
            self.api.add_file_node(node, a.path, readonly=a.readonly)
        if any(e.get("id") == a.key for e in self.api.exports()):
            return
        try:
            self.api.add_export(a.key, node, a.key, writable=not a.readonly)
        except EndpointError:
            if not self._node_used(node):
                self.api.del_node(node)
            raise

    def _node_used(self, node: str) -> bool:
        return any(e.get("node-name") == node for e in self.api.exports())

    def detach(self, key: str) -> None:
        if any(e.get("id") == key for e in self.api.exports()):
            self.api.del_export(key)
        used = {e.get("node-name") for e in self.api.exports()}
        for node in self.api.nodes():
            if node.startswith(NODE_PREFIX) and node not in used:
                self.api.del_node(node)

    def present(self) -> set[str]:
        return {str(e["id"]) for e in self.api.exports()}

    def handle(self, a: Attachment) -> dict[str, Any]:
        if self.portal:
            uri = f"nbd://{self.portal}/{a.key}"
        else:
            uri = f"nbd+unix:///{a.key}?socket={self.nbd_path}"
        return {"uri": uri, "export": a.key, "socket": None if self.portal else self.nbd_path}
