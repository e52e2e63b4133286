"""The root command group and how commands reach the control plane."""

from __future__ import annotations

import os

import click

from .. import __version__
from ..client import DEFAULT_SOCKET, Client

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class Session:
    """Per-invocation state: where the control plane is, and a lazily made client."""

    def __init__(
        self,
        socket: str,
        server: str | None = None,
        token: str | None = None,
        ca: str | None = None,
    ) -> None:
        self.socket = socket
        self.server = server
        self.token = token
        self.ca = ca
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            if self.server:
                if not self.token:
                    raise click.UsageError("--server needs a token (--token-file or VVHOST_TOKEN)")
                self._client = Client.https(self.server, self.token, self.ca)
            else:
                self._client = Client.unix(self.socket)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vvhost")
@click.option(
    "--socket",
    envvar="VVHOST_SOCKET",
    default=DEFAULT_SOCKET,
    show_default=True,
    help="Control plane unix socket (env VVHOST_SOCKET).",
)
@click.option(
    "--server",
    envvar="VVHOST_SERVER",
    default=None,
    help="Remote control plane, https://HOST:PORT (env VVHOST_SERVER).",
)
@click.option(
    "--token-file",
    envvar="VVHOST_TOKEN_FILE",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the bearer token (or env VVHOST_TOKEN).",
)
@click.option(
    "--ca",
    envvar="VVHOST_CA",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="CA certificate that signed the server's certificate.",
)
@click.pass_context
def cli(
    ctx: click.Context, socket: str, server: str | None, token_file: str | None, ca: str | None
) -> None:
    """vvhost: array-backed per-VM volumes (vvols) for KVM hosts."""
    token = os.environ.get("VVHOST_TOKEN")
    if token_file:
        with open(token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    session = Session(os.path.abspath(socket), server, token, ca)
    ctx.obj = session
    ctx.call_on_close(session.close)


pass_session = click.make_pass_decorator(Session)
