"""The control plane's small x509 CA for NBD over TLS, made with the openssl CLI.

    STATE/nbd-tls/                      0700, only the control plane reads it
      ca-key.pem  ca-cert.pem           the CA (EC P-256), made on first use
      hosts/<host>/                     one host's client credentials
        client-key.pem client-cert.pem  subject O=vvhost,OU=<16 hex>,CN=<host>
        identity                        "O=vvhost,OU=<16 hex>,CN=<host>"
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

from .errors import EndpointError

CA_DAYS = "3650"
CERT_DAYS = "825"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_SERVER_EXT = "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
_CLIENT_EXT = "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
_LOCK = threading.RLock()  # one issuer at a time in this process


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


class NbdCa:
    """The CA under ``STATE/nbd-tls`` (see the module docstring)."""

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(state_dir, "nbd-tls")
        self.ca_key = os.path.join(self.root, "ca-key.pem")
        self.ca_cert = os.path.join(self.root, "ca-cert.pem")

    def _ensure_ca(self) -> None:
        if os.path.exists(self.ca_cert):
            return
        _private(self.root)
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            key, cert = os.path.join(tmp, "k"), os.path.join(tmp, "c")
            _openssl(
                "CA", "req", "-x509", *_EC, "-keyout", key, "-out", cert,
                "-days", CA_DAYS, "-subj", "/O=vvhost/CN=vvhost NBD CA",
            )  # fmt: skip
            os.chmod(key, 0o600)
            os.replace(key, self.ca_key)
            os.replace(cert, self.ca_cert)

    def _sign(self, outdir: str, prefix: str, subject: str, ext: str) -> None:
        """``outdir/<prefix>-key.pem`` and ``<prefix>-cert.pem`` for ``subject``."""
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
            os.chmod(key, 0o600)
            os.replace(key, os.path.join(outdir, f"{prefix}-key.pem"))
            os.replace(cert, os.path.join(outdir, f"{prefix}-cert.pem"))

    # -- hosts ----------------------------------------------------------------------------
    def _host_dir(self, host: str) -> str:
        return os.path.join(self.root, "hosts", host)

    def identity(self, host: str) -> str:
        """The host's current identity, issuing its first credentials if it has none."""
        path = os.path.join(self._host_dir(host), "identity")
        with _LOCK:
            if not os.path.exists(path):
                self.issue(host)
            return _read(path).strip()

    def issue(self, host: str) -> str:
        """New client credentials for ``host`` (the old ones are no longer its identity)."""
        d = self._host_dir(host)
        ou = secrets.token_hex(8)
        identity = f"O=vvhost,OU={ou},CN={host}"
        with _LOCK:
            _private(self.root, os.path.dirname(d), d)
            self._sign(d, "client", f"/O=vvhost/OU={ou}/CN={host}", _CLIENT_EXT)
            _write(os.path.join(d, "identity"), identity + "\n")
        return identity

    def credentials(self, host: str) -> ClientCreds:
        with _LOCK:
            return self._credentials(host)

    def _credentials(self, host: str) -> ClientCreds:
        identity = self.identity(host)
        d = self._host_dir(host)
        return ClientCreds(
            host=host,
            identity=identity,
            ca_cert=_read(self.ca_cert),
            client_cert=_read(os.path.join(d, "client-cert.pem")),
            client_key=_read(os.path.join(d, "client-key.pem")),
        )

    def forget(self, host: str) -> None:
        shutil.rmtree(self._host_dir(host), ignore_errors=True)

    # -- servers --------------------------------------------------------------------------
    def server_dir(self, d: str, address: str) -> str:
        """Fill directory ``d`` for ``tls-creds-x509,endpoint=server``: the CA and a
        server certificate for ``address`` (made once)."""
        with _LOCK:
            return self._server_dir(d, address)

    def _server_dir(self, d: str, address: str) -> str:
        if not os.path.exists(os.path.join(d, "server-cert.pem")):
            _private(d)
            ext = f"subjectAltName={_san(address)}\n{_SERVER_EXT}"
            self._sign(d, "server", f"/O=vvhost/CN={address.strip('[]')}", ext)
        if not os.path.exists(os.path.join(d, "ca-cert.pem")):
            self._ensure_ca()
            shutil.copyfile(self.ca_cert, os.path.join(d, "ca-cert.pem"))
        return d
