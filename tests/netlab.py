"""Lab hosts that reach the control plane only over the lab network, with TLS and
their own tokens::

    machine's namespace                               each host's network namespace
      vvhost serve  --listen GATEWAY:PORT (TLS)         libvirtd + hook, the host's CLI
                    unix socket (the test's admin)        host.conf: server https://GATEWAY:PORT
      bridge GATEWAY/24  <──────── veth ────────>         token_file, ca
                                                       127.0.0.1 is its own loopback: only
                                                       the bridge leads to the control plane

``NetLab.vvhost(host, ...)`` runs the vvhost CLI inside that host's network and
mount namespaces (``nsenter`` into its libvirtd), with its configuration.

The storage node is the machine's namespace: the control plane (its catalog in
SQLite, or in a private PostgreSQL with ``db_url``), the endpoint daemons
(``NetLab.endpoints()``: iSCSI portal and NBD over TLS on the bridge address) and
the arrays.  What only the storage node may reach is hidden from every host (an
empty tmpfs over it in the host's mount namespace): the control plane's directory
(``cp/``: its unix socket, its state and default array, the unix NBD exports),
and the directories named in ``hidden`` (a database's socket, an array).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.tlsfixtures import make_certs
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.guest import GuestImage
from vvhost.host.config import HostConfig
from vvhost.host.install import install
from vvhost.labhost import LibvirtHost
from vvhost.labnet import LabNet


@dataclass
class NetLab:
    tmp: str
    net: LabNet
    server: ServerProcess
    admin: Client  # over the unix socket, from the machine's namespace
    url: str
    ca: str
    guest: GuestImage | None = None  # the test guest, for tests/vmlab.py's create_vm
    hidden: tuple[str, ...] = ()  # what the hosts must not see
    db_url: str | None = None  # the catalog, when not SQLite in the state directory
    hosts: dict[str, LibvirtHost] = field(default_factory=dict)
    confs: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> Client:
        """The admin's client (the name tests/vmlab.py's helpers use)."""
        return self.admin

    @property
    def plain_port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def endpoints(self, iscsi: str = "iscsi0", nbd: str = "nbd0") -> None:
        """The endpoints the hosts use, listening on the bridge: an iSCSI portal and
        NBD over TLS (each host its own daemon and client certificate)."""
        self.admin.pe_create(iscsi, "iscsi", portal=f"{self.net.gateway}:{free_port()}")
        self.admin.pe_create(nbd, "nbd", portal=f"{self.net.gateway}:{free_port()}")

    def add_host(
        self,
        name: str,
        tenant: str | None = None,
        protocol: str = "iscsi",
        migration: bool = False,
    ) -> str:
        """Register ``name``, start its libvirtd in its own network namespace with the
        hook, and write its configuration (TLS, its token); returns its address.
        ``migration``: its libvirtd also takes peer-to-peer migrations on its bridge
        address (``tcp_uri``, TCP without auth: the lab network is private)."""
        token = self.admin.host_add(name, f"iqn.2026-11.test.netlab:{name}", tenant)["token"]
        ports: dict[str, Any] = {}
        if migration:
            low = free_port()
            ports = {"tcp_port": free_port(), "migration_ports": (low, low + 5)}
        workdir = os.path.join(self.tmp, name)
        host = LibvirtHost(name, workdir, net=self.net, hidden=self.hidden, **ports)
        self.hosts[name] = host  # stopped by net_lab even if what follows fails
        host.start()
        token_file = os.path.join(self.tmp, f"{name}.token")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(token)
        self.write_conf(name, protocol, token_file=token_file)
        install(host.hooks_dir, self.confs[name])
        host.sighup()
        assert host.address is not None
        return host.address

    def write_conf(self, name: str, protocol: str, **extra: Any) -> None:
        """(Re)write host ``name``'s configuration; ``extra`` overrides fields."""
        host = self.hosts[name]
        conf = os.path.join(self.tmp, f"{name}.conf")
        old = HostConfig.load(conf) if name in self.confs else None
        fields: dict[str, Any] = {
            "name": name,
            "server": self.url,
            "token_file": old.token_file if old else None,
            "ca": self.ca,
            "protocol": protocol,
            "libvirt": host.uri,
            "nbd_tls_dir": host.nbd_tls_dir,
            "ceph_dir": os.path.join(host.workdir, "ceph"),
            **extra,
        }
        HostConfig(**fields).save(conf)
        self.confs[name] = conf

    def netns(self, name: str) -> list[str]:
        """``nsenter`` into host ``name``'s network and mount namespaces."""
        pid = self.hosts[name].pid
        assert pid is not None
        return ["nsenter", f"--net=/proc/{pid}/ns/net", f"--mount=/proc/{pid}/ns/mnt"]

    def run_in(
        self, name: str, *argv: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside host ``name``'s namespaces."""
        return subprocess.run(
            [*self.netns(name), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )

    def vvhost(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``vvhost ARGS`` as host ``name``: in its namespaces, with its config, and
        its token for the commands that take ``--server``."""
        conf = HostConfig.load(self.confs[name])
        env = {
            **os.environ,
            "VVHOST_HOST_CONF": self.confs[name],
            "VVHOST_SERVER": self.url,
            "VVHOST_TOKEN_FILE": conf.token_file or "",
            "VVHOST_CA": self.ca,
            "VVHOST_SOCKET": "/nonexistent/vvhost.sock",  # only the network leads there
            **(env or {}),
        }
        return subprocess.run(
            [*self.netns(name), sys.executable, "-m", "vvhost", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
            cwd="/",
        )


@contextmanager
def net_lab(
    tmp: str,
    guest: GuestImage | None = None,
    db_url: str | None = None,
    hidden: Sequence[str] = (),
) -> Iterator[NetLab]:
    """A lab network and a control plane listening on its bridge with TLS; its
    catalog in PostgreSQL at ``db_url`` when given.  The hosts added later do not
    see the control plane's directory nor ``hidden``."""
    net = LabNet().start()
    lab = None
    try:
        certs = make_certs(os.path.join(tmp, "api-tls"), ips=(net.gateway, "127.0.0.1"))
        port = free_port()
        cp = os.path.join(tmp, "cp")
        os.makedirs(cp, exist_ok=True)
        server = ServerProcess(
            os.path.join(cp, "state"),
            os.path.join(cp, "cp.sock"),
            private_tgtd=True,
            args=[
                "--listen",
                f"{net.gateway}:{port}",
                "--tls-cert",
                certs.cert,
                "--tls-key",
                certs.key,
                *(["--db-url", db_url] if db_url else []),
            ],  # fmt: skip
        ).start()
        try:
            lab = NetLab(
                guest=guest,
                tmp=tmp,
                net=net,
                server=server,
                admin=server.client(),
                url=f"https://{net.gateway}:{port}",
                ca=certs.ca,
                hidden=(cp, *hidden),
                db_url=db_url,
            )
            yield lab
        finally:
            if lab is not None:
                for host in lab.hosts.values():
                    host.stop()
                lab.admin.close()
            server.stop()
    finally:
        net.stop()
