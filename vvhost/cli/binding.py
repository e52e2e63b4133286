"""``vvhost host``, ``vvhost pe``, ``vvhost binding`` and ``vvhost vvol bind|unbind|rebind``."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import ERRORS_BY_CODE
from ..pe import PROTOCOLS
from . import output
from .base import Session, json_option, pass_session
from .vvol import vvol


@click.group()
def host() -> None:
    """Hosts that bind vvols."""


@host.command("add")
@click.argument("name")
@click.option("--iqn", default=None, help="The host's iSCSI initiator name.")
@click.option("--tenant", default=None, help="The tenant the host belongs to.")
@json_option
@pass_session
def host_add(s: Session, name: str, iqn: str | None, tenant: str | None, as_json: bool) -> None:
    """Register a host; prints its bearer token once (keep it: it is not stored)."""
    result = s.client.host_add(name, iqn, tenant)
    if as_json:
        output.emit_json(result)
    else:
        output.keyvalues({k: v for k, v in result.items() if k != "token"})
        click.echo(f"token    {result['token']}")


@host.command("list")
@json_option
@pass_session
def host_list(s: Session, as_json: bool) -> None:
    """List hosts with their state (ok, new, unreachable, fenced) and last contact."""
    rows = s.client.hosts()
    if as_json:
        output.emit_json(rows)
        return
    shown = [{**r, "last_contact": output.fmt("created", r.get("last_contact"))} for r in rows]
    output.table(shown, ["name", "iqn", "state", "last_contact"])


@host.command("show")
@click.argument("name")
@json_option
@pass_session
def host_show(s: Session, name: str, as_json: bool) -> None:
    """Show a host."""
    output.show(s.client.host(name), as_json)


@host.command("remove")
@click.argument("name")
@pass_session
def host_remove(s: Session, name: str) -> None:
    """Forget a host (refused while it has bindings)."""
    s.client.host_remove(name)


@click.group()
def pe() -> None:
    """Protocol endpoints: how hosts reach bound vvols (iscsi, nbd, file, rbd)."""


@pe.command("create")
@click.argument("name")
@click.option("--protocol", required=True, type=click.Choice(list(PROTOCOLS)))
@click.option(
    "--array",
    default=None,
    help="Serve only this array's vvols (default: all; rbd: required, an RBD array).",
)
@click.option(
    "--portal",
    default=None,
    help="HOST:PORT to listen on (iscsi: required; nbd: TCP with TLS, a daemon per host on HOST).",
)
@click.option("--path", default=None, help="Directory of a file endpoint.")
@click.option(
    "--node", default=None, help="Node whose control plane runs it (default: this replica's)."
)
@json_option
@pass_session
def pe_create(
    s: Session,
    name: str,
    protocol: str,
    array: str | None,
    portal: str | None,
    path: str | None,
    node: str | None,
    as_json: bool,
) -> None:
    """Create a protocol endpoint and start its daemon.

    An rbd endpoint has no daemon: a binding hands the host a librbd handle and
    a Ceph identity of its own (client.vvhost-HOST) that reaches only the RADOS
    namespaces of its bindings."""
    import os

    path = os.path.abspath(path) if path else None
    output.show(s.client.pe_create(name, protocol, array, portal, path, node), as_json)


@pe.command("list")
@json_option
@pass_session
def pe_list(s: Session, as_json: bool) -> None:
    """List protocol endpoints."""
    rows = s.client.pes()
    if as_json:
        output.emit_json(rows)
    else:
        output.table(
            rows, ["name", "protocol", "portal", "path", "node_state", "alive", "bindings"]
        )


@pe.command("show")
@click.argument("ref")
@json_option
@pass_session
def pe_show(s: Session, ref: str, as_json: bool) -> None:
    """Show a protocol endpoint."""
    output.show(s.client.pe(ref), as_json)


@pe.command("evacuate")
@click.argument("ref")
@click.option("--to", "to", required=True, help="The endpoint (on a live node) to rebind to.")
@json_option
@pass_session
def pe_evacuate(s: Session, ref: str, to: str, as_json: bool) -> None:
    """Rebind every binding of an endpoint (whose node is gone) to another endpoint;
    exits with the class of the first failure, if any."""
    results = s.client.pe_evacuate(ref, to)
    _report(results, as_json, lambda r: f"{r['vvol']}\t{r['handle']['host']}\t{r['handle']['uri']}")


@pe.command("delete")
@click.argument("ref")
@pass_session
def pe_delete(s: Session, ref: str) -> None:
    """Stop and delete a protocol endpoint (refused while bindings use it)."""
    s.client.pe_delete(ref)


@click.group()
def binding() -> None:
    """Bindings of vvols to hosts."""


@binding.command("list")
@click.option("--host", default=None)
@click.option("--vvol", default=None)
@json_option
@pass_session
def binding_list(s: Session, host: str | None, vvol: str | None, as_json: bool) -> None:
    """List bindings."""
    rows = s.client.bindings(host, vvol)
    if as_json:
        output.emit_json(rows)
    else:
        output.table(rows, ["vvol", "host", "pe", "secondary_id", "refcount", "uri"])


def _report(results: list[dict[str, Any]], as_json: bool, line: Any) -> None:
    """Print per-vvol results; exit with the class of the first failure, if any."""
    if as_json:
        output.emit_json(results)
    failed = [r for r in results if not r["ok"]]
    for r in results:
        if r["ok"] and not as_json:
            click.echo(line(r))
    for r in failed:
        click.echo(f"vvhost: error: {r['vvol']}: {r['error']['message']}", err=True)
    if failed:
        sys.exit(
            ERRORS_BY_CODE.get(failed[0]["error"]["code"], ERRORS_BY_CODE["internal"]).exit_code
        )


@vvol.command("bind")
@click.argument("refs", nargs=-1, required=True)
@click.option("--host", required=True)
@click.option("--pe", default=None, help="Protocol endpoint (default: the first that reaches it).")
@click.option("--shared", is_flag=True, help="Any initiator may see the LUN (iSCSI).")
@json_option
@pass_session
def vvol_bind(
    s: Session, refs: tuple[str, ...], host: str, pe: str | None, shared: bool, as_json: bool
) -> None:
    """Bind vvols to a host; prints each vvol's URI."""
    results = s.client.bind(list(refs), host, pe, shared)
    _report(results, as_json, lambda r: f"{r['vvol']}\t{r['handle']['uri']}")


@vvol.command("unbind")
@click.argument("refs", nargs=-1, required=True)
@click.option("--host", required=True)
@click.option("--all", "drop_all", is_flag=True, help="Drop the binding whatever its count.")
@json_option
@pass_session
def vvol_unbind(
    s: Session, refs: tuple[str, ...], host: str, drop_all: bool, as_json: bool
) -> None:
    """Unbind vvols from a host (the path goes when the count reaches zero)."""
    results = s.client.unbind(list(refs), host, drop_all)
    _report(results, as_json, lambda r: f"{r['vvol']}\trefcount {r['refcount']}")


@vvol.command("rebind")
@click.argument("ref")
@click.option("--host", required=True)
@click.option("--pe", required=True, help="The endpoint to move the binding to.")
@json_option
@pass_session
def vvol_rebind(s: Session, ref: str, host: str, pe: str, as_json: bool) -> None:
    """Move a binding to another endpoint: new path first, old path after."""
    handle = s.client.rebind(ref, host, pe)
    output.show(handle, as_json) if as_json else click.echo(handle["uri"])
