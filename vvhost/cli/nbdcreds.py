"""``vvhost host nbd-credentials``: fetch a host's NBD-over-TLS credentials into a directory.

    DIR/ (0700)  ca-cert.pem  client-cert.pem  client-key.pem (0600)  identity

DIR is what libvirt's qemu.conf ``nbd_tls_x509_cert_dir`` and the host
configuration's ``nbd_tls_dir`` name; ``vvhost vm`` and the hook refresh it by
themselves when a binding handle names another identity.
"""

from __future__ import annotations

import os

import click

from ..host import nbdtls
from . import output
from .base import Session, json_option, pass_session
from .binding import host


@host.command("nbd-credentials")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    default=nbdtls.DEFAULT_DIR,
    show_default=True,
    help="Where to write them (libvirt's nbd_tls_x509_cert_dir).",
)
@json_option
@pass_session
def host_nbd_credentials(s: Session, name: str, directory: str, as_json: bool) -> None:
    """Fetch the host's client certificate for TCP NBD endpoints (TLS) into DIR."""
    directory = os.path.abspath(directory)
    identity = nbdtls.fetch(s.client, name, directory)
    result = {"host": name, "identity": identity, "dir": directory}
    output.emit_json(result) if as_json else click.echo(f"{identity} -> {directory}")
