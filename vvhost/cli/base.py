"""The root command group and how commands reach the control plane."""

from __future__ import annotations

import os

import click

from .. import __version__
from ..client import DEFAULT_SOCKET, Client
from ..errors import InvalidInput
from ..failover import split_servers

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class Session:
    """Per-invocation state: where the control plane is, and a lazily made client."""

    def __init__(
        self,
        socket: str,
        server: list[str] | None = None,
        token: str | None = None,
        ca: str | None = None,
    ) -> None:
        self.socket = socket
        self.server = server or []  # replicas, in the order to try them
        self.token = token
        self.ca = ca
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            if self.server:
                if not self.token and not all(u.startswith("unix://") for u in self.server):
                    raise click.UsageError("--server needs a token (--token-file or VVHOST_TOKEN)")
                self._client = Client.connect(self.server, self.token, self.ca)
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
    "servers",
    envvar="VVHOST_SERVER",
    multiple=True,
    help="Remote control plane, https://HOST:PORT; several replicas: repeat the option "
    "or separate them with commas (env VVHOST_SERVER). A request that cannot reach one "
    "goes to the next (see the README for which requests are never sent twice).",
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
    ctx: click.Context,
    socket: str,
    servers: tuple[str, ...],
    token_file: str | None,
    ca: str | None,
) -> None:
    """vvhost: array-backed per-VM volumes (vvols) for KVM hosts."""
    token = os.environ.get("VVHOST_TOKEN")
    if token_file:
        with open(token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    try:
        server = split_servers(servers)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint="--server") from None
    session = Session(os.path.abspath(socket), server, token, ca)
    ctx.obj = session
    ctx.call_on_close(session.close)


pass_session = click.make_pass_decorator(Session)
