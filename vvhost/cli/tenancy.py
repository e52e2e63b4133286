"""``vvhost tenant``, ``vvhost datastore``, ``vvhost token`` and host tokens."""

from __future__ import annotations

import click

from . import output
from .base import Session, json_option, pass_session
from .binding import host


@click.group()
def tenant() -> None:
    """Tenants: customers whose hosts see only their own vvols and datastores."""


@tenant.command("create")
@click.argument("name")
@json_option
@pass_session
def tenant_create(s: Session, name: str, as_json: bool) -> None:
    """Create a tenant."""
    output.show(s.client.tenant_create(name), as_json)


@tenant.command("list")
@json_option
@pass_session
def tenant_list(s: Session, as_json: bool) -> None:
    """List tenants."""
    rows = s.client.tenants()
    output.emit_json(rows) if as_json else output.table(rows, ["name", "created"])


@tenant.command("delete")
@click.argument("name")
@pass_session
def tenant_delete(s: Session, name: str) -> None:
    """Delete a tenant (refused while hosts, containers, datastores or vvols belong to it)."""
    s.client.tenant_delete(name)


@host.command("token-rotate")
@click.argument("name")
@json_option
@pass_session
def host_token_rotate(s: Session, name: str, as_json: bool) -> None:
    """Issue a new token for a host; the old one stops working. Prints it once."""
    result = s.client.host_token_rotate(name)
    output.emit_json(result) if as_json else click.echo(result["token"])


@click.group()
def token() -> None:
    """Bearer tokens for the TCP+TLS API."""


@token.command("create-admin")
@click.option("--name", default="admin", show_default=True)
@json_option
@pass_session
def token_create_admin(s: Session, name: str, as_json: bool) -> None:
    """Issue an admin token (replacing the earlier one of that name). Prints it once."""
    result = s.client.admin_token(name)
    output.emit_json(result) if as_json else click.echo(result["token"])


@token.command("list")
@json_option
@pass_session
def token_list(s: Session, as_json: bool) -> None:
    """List admin tokens: name, when made, when last used (to the minute); never the secret."""
    rows = s.client.admin_tokens()
    if as_json:
        output.emit_json(rows)
        return
    shown = [{**r, "last_used": output.fmt("created", r["last_used"])} for r in rows]
    output.table(shown, ["name", "created", "last_used"])


@token.command("revoke")
@click.argument("name")
@json_option
@pass_session
def token_revoke(s: Session, name: str, as_json: bool) -> None:
    """Revoke an admin token: the next request carrying it is refused."""
    result = s.client.admin_token_revoke(name)
    if as_json:
        output.emit_json(result)
    if not result["admin_tokens_left"]:
        click.echo(
            "vvhost: warning: no admin token is left; only root on the unix socket can "
            "administer now (`vvhost token create-admin` makes one)",
            err=True,
        )


@click.group()
def datastore() -> None:
    """Datastores: what hypervisors see, with ids in array LUN form (naa.6...)."""


@datastore.command("create")
@click.argument("name")
@click.option("--capacity", required=True, help="Capacity, e.g. 500G.")
@click.option(
    "--container",
    "containers",
    multiple=True,
    help="Container to map (repeatable; default: chosen to fit, free space first).",
)
@click.option("--tenant", default=None)
@json_option
@pass_session
def datastore_create(
    s: Session,
    name: str,
    capacity: str,
    containers: tuple[str, ...],
    tenant: str | None,
    as_json: bool,
) -> None:
    """Allocate a datastore; prints its id."""
    result = s.client.datastore_create(name, capacity, list(containers), tenant)
    output.emit_json(result) if as_json else click.echo(result["id"])


@datastore.command("list")
@json_option
@pass_session
def datastore_list(s: Session, as_json: bool) -> None:
    """List datastores."""
    rows = s.client.datastores()
    if as_json:
        output.emit_json(rows)
    else:
        output.table(rows, ["id", "name", "capacity", "provisioned", "tenant", "container_names"])


@datastore.command("show")
@click.argument("ref")
@json_option
@pass_session
def datastore_show(s: Session, ref: str, as_json: bool) -> None:
    """Show a datastore and its mapping."""
    output.show(s.client.datastore(ref), as_json)


@datastore.command("extend")
@click.argument("ref")
@click.option("--capacity", required=True)
@json_option
@pass_session
def datastore_extend(s: Session, ref: str, capacity: str, as_json: bool) -> None:
    """Grow a datastore (more containers are mapped if needed)."""
    output.show(s.client.datastore_extend(ref, capacity), as_json)


@datastore.command("delete")
@click.argument("ref")
@pass_session
def datastore_delete(s: Session, ref: str) -> None:
    """Delete an empty datastore (its id is never given out again)."""
    s.client.datastore_delete(ref)


@datastore.command("resolve")
@click.argument("ref")
@click.option("--host", default=None, help="Host to resolve for (default: the caller).")
@json_option
@pass_session
def datastore_resolve(s: Session, ref: str, host: str | None, as_json: bool) -> None:
    """The containers, arrays and endpoints a host uses to run VMs on the datastore."""
    result = s.client.datastore_resolve(ref, host)
    if as_json:
        output.emit_json(result)
        return
    click.echo(f"datastore {result['datastore']} ({result['name']}) for host {result['host']}")
    for a in result["arrays"]:
        click.echo(f"  array     {a['name']:<12} {a['backend']} {a.get('path') or ''}".rstrip())
    for c in result["containers"]:
        click.echo(f"  container {c['name']}")
    for p in result["pes"]:
        click.echo(f"  endpoint  {p['name']:<12} {p['protocol']} {p['portal'] or p['path'] or ''}")
