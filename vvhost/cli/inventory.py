"""``vvhost array ...`` and ``vvhost container ...``."""

from __future__ import annotations

import os
from typing import Any

import click

from . import output
from .base import Session, json_option, pass_session


@click.group()
def array() -> None:
    """Storage arrays (backends that hold vvol data)."""


@array.command("add")
@click.argument("name")
@click.option("--backend", default="dir", show_default=True, help="Array backend: dir or rbd.")
@click.option("--path", help="dir: the directory (empty or new) that holds the vvols.")
@click.option("--pool", help="rbd: the RADOS pool.")
@click.option("--conf", help="rbd: the cluster's ceph.conf (default /etc/ceph/ceph.conf).")
@click.option("--user", help="rbd: the Ceph client id to use, without 'client.' (default admin).")
@click.option("--keyring", help="rbd: the keyring holding that client's key.")
@json_option
@pass_session
def array_add(
    s: Session,
    name: str,
    backend: str,
    path: str | None,
    pool: str | None,
    conf: str | None,
    user: str | None,
    keyring: str | None,
    as_json: bool,
) -> None:
    """Add an array: a directory (``--path``) or an RBD pool (``--backend rbd --pool``)."""
    given = {"path": path, "pool": pool, "conf": conf, "user": user, "keyring": keyring}
    files = ("path", "conf", "keyring")
    settings = {
        k: os.path.abspath(v) if k in files else v for k, v in given.items() if v is not None
    }
    output.show(s.client.array_add(name, backend, settings), as_json)


@array.command("list")
@json_option
@pass_session
def array_list(s: Session, as_json: bool) -> None:
    """List arrays and their state: online, offline (its directory is not the array:
    unmounted, replaced) or degraded (cannot be probed: full, I/O errors)."""
    rows = s.client.arrays()
    if as_json:
        output.emit_json(rows)
        return
    for r in rows:
        r["reflink"] = r["capabilities"].get("reflink", False)
        r.setdefault("state", "online")
    output.table(rows, ["name", "backend", "state", "reflink", "where"])
    for r in rows:
        if r.get("reason"):
            click.echo(f"{r['name']} is {r['state']}: {r['reason']}")


@array.command("show")
@click.argument("ref")
@json_option
@pass_session
def array_show(s: Session, ref: str, as_json: bool) -> None:
    """Show an array, its capabilities and free space."""
    output.show(s.client.array(ref), as_json)


@array.command("reap")
@click.argument("ref")
@json_option
@pass_session
def array_reap(s: Session, ref: str, as_json: bool) -> None:
    """Purge at once what the array keeps for nobody (RBD: images in the trash and
    images retired by reverts that no snapshot or clone needs any more)."""
    output.show(s.client.array_reap(ref), as_json)


@array.command("delete")
@click.argument("ref")
@pass_session
def array_delete(s: Session, ref: str) -> None:
    """Forget an array (refused while containers use it; its files stay)."""
    s.client.array_delete(ref)


@click.group()
def container() -> None:
    """Storage containers: pools with a capacity that vvols are carved from."""


@container.command("create")
@click.argument("name")
@click.option("--capacity", required=True, help="Physical capacity, e.g. 100G.")
@click.option("--array", "arrays", multiple=True, help="Array to span (repeatable; default local).")
@click.option("--tenant", default=None, help="Owning tenant.")
@click.option(
    "--overcommit",
    default="1.0",
    show_default=True,
    help="Over-subscription ratio: writable vvols may provision capacity x this.",
)
@click.option(
    "--reserve",
    default=None,
    help="Physical room snapshots and clones leave for guests' writes (5% or 2G).",
)
@click.option(
    "--alerts",
    default=None,
    help="Usage percentages whose crossing is an event, the last critical [default: 80,90].",
)
@json_option
@pass_session
def container_create(
    s: Session,
    name: str,
    capacity: str,
    arrays: tuple[str, ...],
    tenant: str | None,
    overcommit: str,
    reserve: str | None,
    alerts: str | None,
    as_json: bool,
) -> None:
    """Create a storage container."""
    output.show(
        s.client.container_create(
            name, capacity, list(arrays), tenant, overcommit, reserve, alerts
        ),
        as_json,
    )


@container.command("set")
@click.argument("ref")
@click.option("--capacity", default=None, help="Physical capacity (not below what is used).")
@click.option("--overcommit", default=None, help="Over-subscription ratio.")
@click.option("--reserve", default=None, help="Room kept for guests' writes (5% or 2G).")
@click.option("--alerts", default=None, help="Usage percentages that raise events (80,90).")
@json_option
@pass_session
def container_set(
    s: Session,
    ref: str,
    capacity: str | None,
    overcommit: str | None,
    reserve: str | None,
    alerts: str | None,
    as_json: bool,
) -> None:
    """Change a container's capacity, over-subscription ratio, reserve or alert levels."""
    if capacity is None and overcommit is None and reserve is None and alerts is None:
        raise click.UsageError(
            "say what to change: --capacity, --overcommit, --reserve or --alerts"
        )
    _show_container(s.client.container_set(ref, capacity, overcommit, reserve, alerts), as_json)


@container.command("refresh")
@click.argument("ref")
@json_option
@pass_session
def container_refresh(s: Session, ref: str, as_json: bool) -> None:
    """Read every vvol's space figures from the arrays now (serve does it in the
    background, oldest first)."""
    _show_container(s.client.container_refresh(ref), as_json)


@container.command("list")
@json_option
@pass_session
def container_list(s: Session, as_json: bool) -> None:
    """List containers with capacity and provisioned bytes."""
    rows = s.client.containers()
    if as_json:
        output.emit_json(rows)
    else:
        output.table(
            rows, ["name", "capacity", "overcommit", "reserve", "provisioned", "free", "tenant"]
        )


@container.command("show")
@click.argument("ref")
@json_option
@pass_session
def container_show(s: Session, ref: str, as_json: bool) -> None:
    """Show a container with its space figures (sums the catalog keeps)."""
    _show_container(s.client.container(ref), as_json)


def _show_container(shown: dict[str, Any], as_json: bool) -> None:
    """The figures are at the top level too: the human view leaves the ``space`` record out."""
    output.show(shown, as_json, None if as_json else [k for k in shown if k != "space"])


@container.command("delete")
@click.argument("ref")
@pass_session
def container_delete(s: Session, ref: str) -> None:
    """Delete an empty container."""
    s.client.container_delete(ref)
