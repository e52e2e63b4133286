"""The root command group and how commands reach the control plane."""

from __future__ import annotations

import os

import click

from .. import __version__
from ..client import DEFAULT_SOCKET, Client

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class Session:
    """Per-invocation state: where the control plane is, and a lazily made client."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
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
@click.pass_context
def cli(ctx: click.Context, socket: str) -> None:
    """vvhost: array-backed per-VM volumes (vvols) for KVM hosts."""
    session = Session(os.path.abspath(socket))
    ctx.obj = session
    ctx.call_on_close(session.close)


pass_session = click.make_pass_decorator(Session)
