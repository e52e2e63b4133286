"""The control plane's small x509 CA for NBD over TLS, made with the openssl CLI.

Kept in the catalog (a :class:`CaStore`: ``nbdtlsrepo.py``), so every node
signs with the same CA and hands out the same credentials::

    catalog  nbd_ca     the CA (EC P-256), made by the first node that needs it
             nbd_creds  each host's client key and certificate, and its identity:
                        subject O=vvhost,OU=<16 hex>,CN=<host>
    STATE/nbd-tls/                      0700: the CA's files for openssl
      ca-key.pem  ca-cert.pem           (a node's files from before the catalog kept
                                        the CA: offered as the CA, with the hosts/
                                        credentials beside them, if none is kept yet)
    STATE/pe/<endpoint>/tls/            one endpoint's server credentials (server_dir)
      ca-cert.pem server-cert.pem server-key.pem     subjectAltName = the portal host

A host's identity is the distinguished name of its client certificate, in the
form QEMU's ``authz-simple`` compares (the subject's RDNs in certificate order,
joined by commas). The random OU makes every issue a new identity: a host whose
token is rotated, or a host removed and added again under the same name, gets
one its old certificate does not carry, so daemons that authorize only the
current identity refuse the old certificate although the CA signed it.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Protocol

from .errors import EndpointError

CA_DAYS = "3650"
CERT_DAYS = "825"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_SERVER_EXT = "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
_CLIENT_EXT = "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"


@dataclass(frozen=True)
class ClientCreds:
    """What a host needs to open its NBD exports (the files of libvirt's nbd cert dir)."""

    host: str
    identity: str
    ca_cert: str
    client_cert: str
    client_key: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def _openssl(step: str, *args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise EndpointError(tool="openssl", detail=f"{step} failed: {last}")


def _read(path: str) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read()


def _write(path: str, text: str, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _private(*dirs: str) -> None:
    """Make each directory (in order) and let only its owner in."""
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o700)


def _san(address: str) -> str:
    try:
        return f"IP:{ipaddress.ip_address(address.strip('[]'))}"
    except ValueError:
        return f"DNS:{address}"


class CaStore(Protocol):
    """Where the CA and hosts' credentials are kept (the catalog: nbdtlsrepo.py);
    credentials are (identity, certificate PEM, key PEM)."""

    def load_ca(self) -> tuple[str, str] | None: ...
    def offer_ca(self, cert: str, key: str) -> tuple[str, str]: ...
    def load(self, host: str) -> tuple[str, str, str] | None: ...
    def save(
        self, host: str, issued: tuple[str, str, str], replace: bool
    ) -> tuple[str, str, str]: ...
    def forget(self, host: str) -> None: ...


class NbdCa:
    """The CA kept in ``store``, with its files under ``STATE/nbd-tls`` for openssl
    (see the module docstring)."""

    def __init__(self, state_dir: str, store: CaStore) -> None:
        self.root = os.path.join(state_dir, "nbd-tls")
        self.ca_key = os.path.join(self.root, "ca-key.pem")
        self.ca_cert = os.path.join(self.root, "ca-cert.pem")
        self.store = store
        self._cert: str | None = None  # the CA certificate, once its files are in place
        self._lock = threading.RLock()  # one issuer at a time in this process

    # -- the CA ---------------------------------------------------------------------------
    def _ensure_ca(self) -> str:
        """The CA certificate; its key and certificate files are the store's."""
        with self._lock:
            if self._cert is None:
                stands = self.store.load_ca()
                if stands is None:
                    local = self._local_ca()
                    stands = self.store.offer_ca(*(local or self._new_ca()))
                    if local is not None and stands == local:
                        self._take_over_local_hosts()  # this node's CA is everyone's now
                self._write_ca(*stands)
                self._cert = stands[0]
            return self._cert

    def _local_ca(self) -> tuple[str, str] | None:
        """The CA files of a node from before the catalog kept the CA."""
        if os.path.exists(self.ca_cert) and os.path.exists(self.ca_key):
            return _read(self.ca_cert), _read(self.ca_key)
        return None

    def _new_ca(self) -> tuple[str, str]:
        _private(self.root)
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            key, cert = os.path.join(tmp, "k"), os.path.join(tmp, "c")
            _openssl(
                "CA", "req", "-x509", *_EC, "-keyout", key, "-out", cert,
                "-days", CA_DAYS, "-subj", "/O=vvhost/CN=vvhost NBD CA",
            )  # fmt: skip
            return _read(cert), _read(key)

    def _write_ca(self, cert: str, key: str) -> None:
        _private(self.root)
        if self._local_ca() != (cert, key):
            _write(self.ca_key, key, 0o600)
            _write(self.ca_cert, cert)

    def _take_over_local_hosts(self) -> None:
        """Move the hosts' credentials this node issued before into the store."""
        hosts = os.path.join(self.root, "hosts")
        for host in sorted(os.listdir(hosts)) if os.path.isdir(hosts) else []:
            d = os.path.join(hosts, host)
            try:
                identity = _read(os.path.join(d, "identity")).strip()
                cert = _read(os.path.join(d, "client-cert.pem"))
                key = _read(os.path.join(d, "client-key.pem"))
            except OSError:
                continue  # half made: the host gets new credentials when it needs them
            self.store.save(host, (identity, cert, key), replace=False)
        shutil.rmtree(hosts, ignore_errors=True)

    def _sign(self, subject: str, ext: str) -> tuple[str, str]:
        """A new key and a certificate for ``subject`` signed by the CA: (key, cert) PEM."""
        self._ensure_ca()
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            key, csr, cert, extfile = (os.path.join(tmp, n) for n in ("k", "r", "c", "e"))
            _write(extfile, ext)
            _openssl("request", "req", *_EC, "-keyout", key, "-out", csr, "-subj", subject)
            _openssl(
                "sign", "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
                "-set_serial", str(int(secrets.token_hex(8), 16)), "-out", cert,
                "-days", CERT_DAYS, "-extfile", extfile,
            )  # fmt: skip
            return _read(key), _read(cert)

    # -- hosts ----------------------------------------------------------------------------
    def current(self, host: str) -> str | None:
        """The host's current identity; None when it has no credentials."""
        got = self.store.load(host)
        return got[0] if got else None

    def identity(self, host: str) -> str:
        """The host's current identity, issuing its first credentials if it has none."""
        return self.current(host) or self._issue(host, replace=False)

    def issue(self, host: str) -> str:
        """New client credentials for ``host`` (the old ones are no longer its identity)."""
        return self._issue(host, replace=True)

    def _issue(self, host: str, replace: bool) -> str:
        ou = secrets.token_hex(8)
        identity = f"O=vvhost,OU={ou},CN={host}"
        with self._lock:
            key, cert = self._sign(f"/O=vvhost/OU={ou}/CN={host}", _CLIENT_EXT)
        return self.store.save(host, (identity, cert, key), replace)[0]

    def credentials(self, host: str) -> ClientCreds:
        ca_cert = self._ensure_ca()
        self.identity(host)
        got = self.store.load(host)
        if got is None:  # removed meanwhile
            raise EndpointError(tool="nbd-tls", detail=f"host {host} has no credentials")
        identity, cert, key = got
        return ClientCreds(
            host=host, identity=identity, ca_cert=ca_cert, client_cert=cert, client_key=key
        )

    def forget(self, host: str) -> None:
        self.store.forget(host)

    # -- servers --------------------------------------------------------------------------
    def server_dir(self, d: str, address: str) -> str:
        """Fill directory ``d`` for ``tls-creds-x509,endpoint=server``: the CA and a
        server certificate for ``address`` (made once, and again if the CA changed:
        a node whose own CA was not the one kept)."""
        with self._lock:
            ca_cert = self._ensure_ca()
            ca_path = os.path.join(d, "ca-cert.pem")
            current = os.path.exists(os.path.join(d, "server-cert.pem")) and (
                os.path.exists(ca_path) and _read(ca_path) == ca_cert
            )
            if not current:
                _private(d)
                ext = f"subjectAltName={_san(address)}\n{_SERVER_EXT}"
                key, cert = self._sign(f"/O=vvhost/CN={address.strip('[]')}", ext)
                _write(os.path.join(d, "server-key.pem"), key, 0o600)
                _write(os.path.join(d, "server-cert.pem"), cert)
                _write(ca_path, ca_cert)
            return d
