"""A throw-away CA and a server certificate for 127.0.0.1, made with openssl."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from vvhost.daemon import ServerProcess, free_port


@dataclass(frozen=True)
class Certs:
    ca: str
    cert: str
    key: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(directory: str, ips: tuple[str, ...] = ("127.0.0.1",)) -> Certs:
    """A CA and a server certificate valid for ``ips`` (and localhost)."""
    d = directory
    os.makedirs(d, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        os.path.join(d, n) for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = os.path.join(d, "san.cnf")
    with open(ext, "w", encoding="utf-8") as fh:
        names = ",".join(f"IP:{ip}" for ip in ips)
        fh.write(f"subjectAltName={names},DNS:localhost\n")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=vvhost test CA",
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        "/CN=127.0.0.1",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        ext,
    )
    return Certs(ca=ca, cert=cert, key=key)


@dataclass(frozen=True)
class TlsPlane:
    """A ``vvhost serve`` with a TCP+TLS listener (and its root-only unix socket)."""

    server: ServerProcess
    url: str
    ca: str


def start_tls_plane(
    tmp_path: str, private_tgtd: bool = True, env: dict[str, str] | None = None
) -> TlsPlane:
    """Start a control plane under TMP_PATH/state listening on 127.0.0.1 with TLS;
    the caller stops ``server``."""
    certs = make_certs(os.path.join(tmp_path, "api-tls"))
    port = free_port()
    server = ServerProcess(
        os.path.join(tmp_path, "state"),
        os.path.join(tmp_path, "s.sock"),
        private_tgtd=private_tgtd,
        args=["--listen", f"127.0.0.1:{port}", "--tls-cert", certs.cert, "--tls-key", certs.key],
        env=env,
    ).start()
    return TlsPlane(server, f"https://127.0.0.1:{port}", certs.ca)
