"""The ``nbd`` endpoint on TCP: NBD over TLS, one ``qemu-storage-daemon`` per host.

QEMU authorizes clients per NBD server, not per export, and a daemon runs one
server; so each host that binds through the endpoint gets a daemon of its own,
on its own port, that lets in that host's client certificate and nothing else::

    PE portal ADDR:PORT  (ADDR is where the daemons listen; PORT is not served)
    catalog nbd_ports          (PE, host) -> port: chosen once by the endpoint's node,
                               kept across restarts, read by every node for handles
    STATE/pe/<name>/
      tls/                     ca-cert.pem server-cert.pem server-key.pem (SAN = ADDR)
      hosts/<host>/            one daemon (an NbdEndpoint), its pid, cmdline, qmp.sock
            qemu-storage-daemon
              tls-creds-x509 vvtls  (endpoint=server, verify-peer=on)
              authz-simple vvauthz  identity = the host's DN (NbdCa.identity)
              nbd-server-start ADDR:port tls-creds=vvtls tls-authz=vvauthz
              exports vv-<vvol>.<host> ...  (only that host's bindings)

A client without a certificate of the CA cannot even list the exports; a
certificate of another host (same CA) fails the authorization. Rotating a
host's credentials changes the DN its daemons let in (``authorize``), so its
old certificate is refused from then on while open connections stay; removing
the host stops its daemons (``drop_host``). The CA and the hosts' identities
are the catalog's (``certs.py``), so a rotation through any node reaches the
daemons of every node: each endpoint's node brings its daemons in line with the
catalog when it reconciles the endpoint (``sync_hosts``).

A host learns from the binding handle that the export needs TLS (``tls``:
type and identity) and fetches its credentials from the control plane.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

from ..arrays.sources import DataSource
from ..certs import NbdCa
from ..errors import VvhostError
from ..tools import EndpointError
from .base import Attachment
from .nbd import NbdEndpoint, ServerTls

log = logging.getLogger("vvhost.nbdtls")


def host_of_key(key: str) -> str | None:
    """The host of an export named ``vv-<vvol id>.<host>`` (vvol ids have no dot)."""
    _, dot, host = key.partition(".")
    return host if dot and host else None


class PortStore(Protocol):
    """Where each host's daemon port is recorded (the catalog: nbdtlsrepo.py)."""

    def port(self, pe_id: str, host: str) -> int | None: ...
    def claim_port(self, pe_id: str, host: str, port: int) -> int: ...
    def drop_port(self, pe_id: str, host: str) -> None: ...


@dataclass(frozen=True)
class TlsShared:
    """What every TCP NBD endpoint of a control plane shares: its CA and the port book."""

    ca: NbdCa
    ports: PortStore


class NbdTlsEndpoint:
    protocol = "nbd"

    def __init__(self, pe_id: str, name: str, rundir: str, portal: str, tls: TlsShared) -> None:
        self.pe_id = pe_id
        self.name = name
        self.rundir = rundir
        self.portal = portal
        self.address = portal.rpartition(":")[0]
        self.ca = tls.ca
        self.ports = tls.ports
        self._daemons: dict[str, NbdEndpoint] = {}
        self._authorized: dict[str, str] = {}  # host -> the identity its daemon lets in
        self._lock = threading.RLock()

    # -- per-host daemons -------------------------------------------------------------------
    def _hosts_dir(self) -> str:
        return os.path.join(self.rundir, "hosts")

    def port(self, host: str) -> int:
        """The port of ``host``'s daemon: the recorded one, else one chosen now (the
        one a daemon of before the catalog kept ports used, or a free one)."""
        got = self.ports.port(self.pe_id, host)
        if got is not None:
            return got
        legacy = os.path.join(self._hosts_dir(), host, "port")
        try:
            with open(legacy, encoding="ascii") as fh:
                chosen = int(fh.read().strip())
        except (OSError, ValueError):
            with socket.create_server((self.address.strip("[]"), 0)) as probe:
                chosen = int(probe.getsockname()[1])
        return self.ports.claim_port(self.pe_id, host, chosen)

    def _identity(self, host: str) -> str:
        """The identity ``host``'s daemon is to let in now (remembered as let in)."""
        identity = self.ca.identity(host)
        self._authorized[host] = identity
        return identity

    def _daemon(self, host: str) -> NbdEndpoint:
        with self._lock:
            d = self._daemons.get(host)
            if d is None:
                tls = ServerTls(
                    creds_dir=self.ca.server_dir(os.path.join(self.rundir, "tls"), self.address),
                    identity=lambda: self._identity(host),
                )
                portal = f"{self.address}:{self.port(host)}"
                rundir = os.path.join(self._hosts_dir(), host)
                d = NbdEndpoint(f"{self.name}-{host}", rundir, portal, tls)
                self._daemons[host] = d
            return d

    def _running(self, host: str | None) -> NbdEndpoint:
        if not host:
            raise EndpointError(tool="nbd", detail="a TCP NBD binding needs its host's name")
        with self._lock:
            d = self._daemon(host)
            if not d.alive():
                d.start()
            return d

    def _known_hosts(self) -> list[str]:
        try:
            return sorted(os.listdir(self._hosts_dir()))
        except FileNotFoundError:
            return []

    # -- the Endpoint protocol ----------------------------------------------------------------
    def start(self) -> None:
        """Start (or adopt) the daemon of every host that has had one here."""
        os.makedirs(self.rundir, exist_ok=True)
        with self._lock:
            for host in self._known_hosts():
                d = self._daemon(host)
                if not d.alive():  # a new object adopts a daemon left running
                    d.start()

    def stop(self) -> None:
        with self._lock:
            for d in self._daemons.values():
                d.stop()
            self._daemons.clear()

    def alive(self) -> bool:
        with self._lock:
            return all(d.alive() for d in self._daemons.values())

    def attach(self, a: Attachment) -> None:
        self._running(a.host).attach(a)

    def attach_many(self, atts: list[Attachment]) -> dict[str, VvhostError]:
        failed: dict[str, VvhostError] = {}
        by_host: dict[str | None, list[Attachment]] = defaultdict(list)
        for a in atts:
            by_host[a.host].append(a)
        for host, group in by_host.items():
            try:
                failed.update(self._running(host).attach_many(group))
            except VvhostError as exc:
                failed.update({a.key: exc for a in group})
        return failed

    def detach(self, key: str) -> None:
        host = host_of_key(key)
        with self._lock:
            d = self._daemons.get(host) if host else None
        if d is not None and d.alive():
            d.detach(key)

    def present(self) -> set[str]:
        keys: set[str] = set()
        with self._lock:
            daemons = list(self._daemons.values())
        for d in daemons:
            if d.alive():
                keys |= d.present()
        return keys

    def holds(self, source: DataSource) -> bool:
        """Whether some host's daemon has ``source`` open now."""
        with self._lock:
            daemons = list(self._daemons.values())
        return any(d.holds(source) for d in daemons)

    def refresh(self, a: Attachment) -> None:
        self._running(a.host).refresh(a)

    def stale(self, atts: list[Attachment]) -> list[str]:
        out: list[str] = []
        by_host: dict[str | None, list[Attachment]] = defaultdict(list)
        for a in atts:
            by_host[a.host].append(a)
        for host, group in by_host.items():
            out += self._running(host).stale(group)
        return out

    def handle(self, a: Attachment) -> dict[str, Any]:
        host = a.host or host_of_key(a.key) or ""
        return {
            "uri": f"nbd://{self.address}:{self.port(host)}/{a.key}",
            "export": a.key,
            "socket": None,
            "tls": {"type": "x509", "identity": self.ca.identity(host)},
        }

    def daemons(self) -> dict[str, dict[str, Any]]:
        """host -> where its daemon listens, its PID and whether it runs (``pe show``)."""
        with self._lock:
            hosts = self._known_hosts()
            found = {h: self._daemons.get(h) for h in hosts}
        return {
            h: {
                "portal": f"{self.address}:{self.port(h)}",
                "pid": d.daemon.pid if d else None,
                "alive": bool(d and d.alive()),
            }
            for h, d in found.items()
        }

    # -- credentials changed ------------------------------------------------------------------
    def authorize(self, host: str) -> None:
        """Let ``host``'s daemon accept only its current identity."""
        with self._lock:
            d = self._daemons.get(host)
        if d is None or not d.alive():
            return  # it takes the current identity when it starts
        try:
            d.authorize(self._identity(host))
        except EndpointError as exc:  # fail closed: the supervisor restarts it with the new one
            log.error("endpoint %s: re-authorizing host %s failed, stopping its daemon: %s",
                      self.name, host, exc)  # fmt: skip
            d.stop()

    def sync_hosts(self, identities: dict[str, str]) -> None:
        """Bring the daemons in line with ``identities`` (host -> current identity, for
        every host that may reach the endpoint): a daemon of a host left out stops, one
        that lets in an older identity switches (a rotation made through another node)."""
        with self._lock:
            for host in self._known_hosts():
                want = identities.get(host)
                if want is None:
                    log.warning("endpoint %s: host %s may no longer reach it; stopping its "
                                "daemon", self.name, host)  # fmt: skip
                    self.drop_host(host)
                elif self._authorized.get(host) != want:
                    self.authorize(host)

    def drop_host(self, host: str) -> None:
        """Stop ``host``'s daemon and forget its port (the host is gone)."""
        with self._lock:
            d = self._daemons.pop(host, None) or self._daemon_if_known(host)
            if d is not None:
                d.stop()
            self._authorized.pop(host, None)
            shutil.rmtree(os.path.join(self._hosts_dir(), host), ignore_errors=True)
            self.ports.drop_port(self.pe_id, host)

    def _daemon_if_known(self, host: str) -> NbdEndpoint | None:
        if host not in self._known_hosts():
            return None
        d = self._daemon(host)
        self._daemons.pop(host, None)
        return d
