"""This host's configuration: ``/etc/vvhost/host.conf`` (env ``VVHOST_HOST_CONF``)::

[host]
name = kvm1                                  # this host's name in vvhost
server = unix:///run/vvhost/vvhost.sock      # or https://cp.example:8443; several
                                             #   replicas: https://a:8443, https://b:8443
                                             #   (commas or blanks), tried in order
token_file = /etc/vvhost/host.token          # for https
ca = /etc/vvhost/ca.pem                      # for https
protocol = iscsi                             # preferred endpoint protocol
pe =                                         # or a fixed endpoint name
libvirt = qemu:///system                     # where `vvhost vm` defines domains
nbd_tls_dir = /etc/pki/vvhost/nbd            # NBD-over-TLS credentials (= qemu.conf
                                             #   nbd_tls_x509_cert_dir)
ceph_dir = /etc/vvhost/ceph                  # this host's Ceph key for qemu-img (rbd)
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass

import httpx

from ..client import Client
from ..errors import InvalidInput
from ..failover import split_servers
from . import cephsecret, nbdtls
from .handles import HostAccess

DEFAULT_PATH = "/etc/vvhost/host.conf"
HOOK_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=5.0)


@dataclass(frozen=True)
class HostConfig:
    name: str
    server: str = "unix:///run/vvhost/vvhost.sock"
    token_file: str | None = None
    ca: str | None = None
    protocol: str = "iscsi"
    pe: str | None = None
    libvirt: str = "qemu:///system"
    nbd_tls_dir: str = nbdtls.DEFAULT_DIR
    ceph_dir: str = cephsecret.DEFAULT_DIR

    @classmethod
    def load(cls, path: str | None = None) -> HostConfig:
        path = path or os.environ.get("VVHOST_HOST_CONF") or DEFAULT_PATH
        parser = configparser.ConfigParser()
        if not parser.read(path):
            raise InvalidInput(detail=f"no host configuration at {path} (run `vvhost host init`)")
        if not parser.has_section("host") or not parser.get("host", "name", fallback=""):
            raise InvalidInput(detail=f"{path} has no [host] name")
        sec = parser["host"]
        if not split_servers(sec.get("server", cls.server)):
            raise InvalidInput(detail=f"{path}: [host] server is empty")
        conf = cls(
            name=sec["name"],
            server=sec.get("server", cls.server),
            token_file=sec.get("token_file") or None,
            ca=sec.get("ca") or None,
            protocol=sec.get("protocol", cls.protocol),
            pe=sec.get("pe") or None,
            libvirt=sec.get("libvirt", cls.libvirt),
            nbd_tls_dir=sec.get("nbd_tls_dir", cls.nbd_tls_dir),
            ceph_dir=sec.get("ceph_dir", cls.ceph_dir),
        )
        return conf

    def save(self, path: str) -> None:
        parser = configparser.ConfigParser()
        parser["host"] = {k: str(v) for k, v in self.__dict__.items() if v is not None}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            parser.write(fh)
        os.replace(tmp, path)

    def access(self, client: Client) -> HostAccess:
        """Where this host keeps the credentials its bindings need."""
        return HostAccess(client, self.name, self.nbd_tls_dir, self.ceph_dir)

    @property
    def servers(self) -> list[str]:
        """The control-plane replicas, in the order to try them."""
        return split_servers(self.server)

    def client(self, timeout: httpx.Timeout | None = None) -> Client:
        """A client of the control plane this host uses (failing over between the
        replicas of ``server``)."""
        servers = self.servers
        token: str | None = None
        remote = [url for url in servers if not url.startswith("unix://")]
        if remote:
            if not self.token_file:
                raise InvalidInput(detail=f"{remote[0]} needs token_file in the host configuration")
            with open(self.token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        if timeout:
            return Client.connect(servers, token, self.ca, timeout)
        return Client.connect(servers, token, self.ca)
