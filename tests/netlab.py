"""Lab hosts that reach the control plane only over the lab network, with TLS and
their own tokens::

    machine's namespace                               each host's network namespace
      vvhost serve  --listen GATEWAY:PORT (TLS)         libvirtd + hook, the host's CLI
                    unix socket (the test's admin)        host.conf: server https://GATEWAY:PORT
      bridge GATEWAY/24  <──────── veth ────────>         token_file, ca
                                                       127.0.0.1 is its own loopback: only
                                                       the bridge leads to the control plane

``NetLab.vvhost(host, ...)`` runs the vvhost CLI inside that host's network
namespace (``nsenter --net`` into its libvirtd), with its configuration.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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
    hosts: dict[str, LibvirtHost] = field(default_factory=dict)
    confs: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> Client:
        """The admin's client (the name tests/vmlab.py's helpers use)."""
        return self.admin

    def add_host(self, name: str, tenant: str | None = None, protocol: str = "iscsi") -> str:
        """Register ``name``, start its libvirtd in its own network namespace with the
        hook, and write its configuration (TLS, its token); returns its address."""
        token = self.admin.host_add(name, f"iqn.2026-11.test.netlab:{name}", tenant)["token"]
        host = LibvirtHost(name, os.path.join(self.tmp, name), net=self.net)
        self.hosts[name] = host  # stopped by net_lab even if what follows fails
        host.start()
        token_file = os.path.join(self.tmp, f"{name}.token")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(token)
        conf = os.path.join(self.tmp, f"{name}.conf")
        HostConfig(
            name=name,
            server=self.url,
            token_file=token_file,
            ca=self.ca,
            protocol=protocol,
            libvirt=host.uri,
            nbd_tls_dir=host.nbd_tls_dir,
        ).save(conf)
        install(host.hooks_dir, conf)
        host.sighup()
        self.confs[name] = conf
        assert host.address is not None
        return host.address

    def netns(self, name: str) -> list[str]:
        pid = self.hosts[name].pid
        assert pid is not None
        return ["nsenter", f"--net=/proc/{pid}/ns/net"]

    def vvhost(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``vvhost ARGS`` as host ``name``: in its network namespace, with its config,
        and its token for the commands that take ``--server``."""
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
        )


@contextmanager
def net_lab(tmp: str, guest: GuestImage | None = None) -> Iterator[NetLab]:
    """A lab network and a control plane listening on its bridge with TLS."""
    net = LabNet().start()
    lab = None
    try:
        certs = make_certs(os.path.join(tmp, "api-tls"), ips=(net.gateway, "127.0.0.1"))
        port = free_port()
        server = ServerProcess(
            os.path.join(tmp, "state"),
            os.path.join(tmp, "cp.sock"),
            private_tgtd=True,
            args=[
                "--listen",
                f"{net.gateway}:{port}",
                "--tls-cert",
                certs.cert,
                "--tls-key",
                certs.key,
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
