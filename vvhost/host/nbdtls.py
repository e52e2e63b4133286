"""This host's credentials for NBD over TLS, and the client options that use them.

A binding handle on a TCP NBD endpoint says ``"tls": {"type": "x509",
"identity": DN}``: the export opens only with this host's client certificate.
The host keeps it in one directory, the one libvirt reads for every NBD disk
with ``tls='yes'`` (qemu.conf ``nbd_tls_x509_cert_dir``)::

    <nbd_tls_dir>/          0700   host.conf ``nbd_tls_dir`` (default /etc/pki/vvhost/nbd)
      ca-cert.pem           the control plane's NBD CA (checks the server)
      client-cert.pem       subject = DN
      client-key.pem        0600
      identity              DN, to tell whether the files are current

Steps when a handle needs TLS (``ensure``): compare its DN with ``identity``;
if they differ (first use, or the credentials were rotated), fetch them with
this host's own token (``GET /v1/hosts/NAME/nbd-credentials``) and replace the
files. qemu-img and qemu-io get ``--object tls-creds-x509,...,endpoint=client``
(``client_object``) and image options naming it (host/handles/nbd.py); libvirt
disks get ``tls='yes'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..client import Client
from ..errors import InvalidInput

DEFAULT_DIR = "/etc/pki/vvhost/nbd"
OBJECT_ID = "vvtls0"  # the qemu-img --object holding a host's NBD client credentials
_FILES = (("ca-cert.pem", "ca_cert", 0o644), ("client-cert.pem", "client_cert", 0o644))


def needs_tls(handle: dict[str, Any]) -> bool:
    return bool(handle.get("protocol") == "nbd" and handle.get("tls"))


def current_identity(directory: str) -> str | None:
    try:
        with open(os.path.join(directory, "identity"), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _write(path: str, text: str, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write(directory: str, creds: dict[str, str]) -> None:
    """Store credentials from the control plane; the key is written before the
    certificate and ``identity`` last, so a reader never pairs new with old."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        _write(os.path.join(directory, "client-key.pem"), creds["client_key"], 0o600)
        for name, field, mode in _FILES:
            _write(os.path.join(directory, name), creds[field], mode)
        _write(os.path.join(directory, "identity"), creds["identity"] + "\n", 0o644)
    except OSError as exc:
        raise InvalidInput(
            detail=f"cannot write NBD credentials into {directory}: {exc.strerror or exc}"
        ) from None


def fetch(client: Client, host: str, directory: str) -> str:
    """Fetch this host's credentials into ``directory``; returns the identity."""
    creds = client.host_nbd_credentials(host)
    write(directory, creds)
    return str(creds["identity"])


def ensure(client: Client, host: str, handles: Iterable[dict[str, Any]], directory: str) -> None:
    """Make the credentials in ``directory`` current for every handle that needs
    TLS, and note the directory in those handles (their qemu-img options read it)."""
    tls = [h for h in handles if needs_tls(h)]
    wanted = {str(h["tls"]["identity"]) for h in tls}
    if wanted and current_identity(directory) not in wanted:
        fetch(client, host, directory)
    for h in tls:
        h["tls"] = {**h["tls"], "dir": directory}


def client_object(directory: str) -> str:
    """The ``--object`` spec of the client credentials kept in ``directory``."""
    return f"tls-creds-x509,id={OBJECT_ID},dir={_esc(directory)},endpoint=client"


def _esc(value: str) -> str:
    return value.replace(",", ",,")
