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
and image options naming it (``image_args``); libvirt disks get ``tls='yes'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..client import Client
from ..errors import InvalidInput
from .domainxml import TLS_OBJECT_ID

DEFAULT_DIR = "/etc/pki/vvhost/nbd"
OBJECT_ID = TLS_OBJECT_ID
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
    TLS, and note the directory in those handles (``image_args`` reads it)."""
    tls = [h for h in handles if needs_tls(h)]
    wanted = {str(h["tls"]["identity"]) for h in tls}
    if wanted and current_identity(directory) not in wanted:
        fetch(client, host, directory)
    for h in tls:
        h["tls"] = {**h["tls"], "dir": directory}


def _object(handle: dict[str, Any]) -> str:
    directory = str(handle["tls"].get("dir") or DEFAULT_DIR)
    return f"tls-creds-x509,id={OBJECT_ID},dir={_esc(directory)},endpoint=client"


def objects(handles: Iterable[dict[str, Any]]) -> list[str]:
    """The ``--object`` arguments for nodes built by ``domainxml.blockdev`` from
    ``handles`` (their ``tls-creds`` names this object); empty without TLS."""
    tls = [h for h in handles if needs_tls(h)]
    return ["--object", _object(tls[0])] if tls else []


def _esc(value: str) -> str:
    return value.replace(",", ",,")


def image_args(handle: dict[str, Any], option: str = "--image-opts") -> list[str] | None:
    """qemu-img arguments opening a TLS NBD binding as raw (None if no TLS):
    the client credentials object, then ``option`` (``--image-opts`` or
    ``--target-image-opts``) and the image options naming it."""
    if not needs_tls(handle):
        return None
    host, _, port = str(handle["uri"])[len("nbd://") :].split("/")[0].rpartition(":")
    obj = _object(handle)
    opts = (
        f"driver=raw,file.driver=nbd,file.server.type=inet,file.server.host={host},"
        f"file.server.port={port},file.export={_esc(handle['export'])},"
        f"file.tls-creds={OBJECT_ID}"
    )
    return ["--object", obj, option, opts]
