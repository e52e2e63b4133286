"""``vvhost vvol ...``: the vvol lifecycle."""

from __future__ import annotations

import click

from . import output
from .base import Session, json_option, pass_session
from .progress import run_with_progress

SHOW_KEYS = [
    "id",
    "name",
    "type",
    "container",
    "array",
    "size",
    "used",
    "parent",
    "relation",
    "readonly",
    "snapshots",
    "children",
    "state",
    "generation",
    "metadata",
    "path",
]
generation_option = click.option(
    "--generation", type=int, default=None, help="Only if the vvol is still at this generation."
)


def _meta(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        out[key] = value
    return out


def _result(obj: dict[str, object], as_json: bool, quiet_id: bool = True) -> None:
    if as_json:
        output.emit_json(obj)
    elif quiet_id:
        click.echo(obj["id"])
    else:
        output.keyvalues(obj, SHOW_KEYS)


@click.group()
def vvol() -> None:
    """Virtual volumes."""


@vvol.command("create")
@click.option("--container", default=None, help="Container to carve the vvol from.")
@click.option("--datastore", default=None, help="Datastore to place the vvol in (by its rule).")
@click.option("--size", required=True, help="Size, e.g. 10G or 512M (multiple of 1M).")
@click.option(
    "--type",
    "vtype",
    default="data",
    show_default=True,
    type=click.Choice(["data", "config", "swap", "memory", "other"]),
)
@click.option("--name", default=None)
@click.option("--meta", multiple=True, help="KEY=VALUE (repeatable).")
@json_option
@pass_session
def vvol_create(
    s: Session,
    container: str | None,
    datastore: str | None,
    size: str,
    vtype: str,
    name: str | None,
    meta: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a vvol (in --container or --datastore) and print its id."""
    if not container and not datastore:
        raise click.UsageError("say where: --container C or --datastore D")
    _result(
        s.client.vvol_create(container, size, vtype, name, _meta(meta), datastore=datastore),
        as_json,
    )


SORT_KEYS = ("created", "size", "allocated", "unique")


@vvol.command("list")
@click.option("--container", default=None)
@click.option("--datastore", default=None)
@click.option(
    "--sort",
    type=click.Choice(SORT_KEYS),
    default="created",
    show_default=True,
    help="Order; space figures largest first (unique: what deleting frees most).",
)
@json_option
@pass_session
def vvol_list(
    s: Session, container: str | None, datastore: str | None, sort: str, as_json: bool
) -> None:
    """List vvols with their space figures."""
    rows = s.client.vvols(container, datastore)
    if sort != "created":
        rows = sorted(rows, key=lambda r: int(r.get(sort) or 0), reverse=True)
    if as_json:
        output.emit_json(rows)
    else:
        output.table(
            rows,
            ["id", "name", "type", "container", "size", "allocated", "unique", "relation", "state"],
        )


@vvol.command("show")
@click.argument("ref")
@json_option
@pass_session
def vvol_show(s: Session, ref: str, as_json: bool) -> None:
    """Show a vvol."""
    _result(s.client.vvol(ref), as_json, quiet_id=False)


@vvol.command("delete")
@click.argument("ref")
@click.option(
    "--deferred",
    is_flag=True,
    help="If snapshots or linked clones still need it: hide it now, free it when the "
    "last of them goes.",
)
@generation_option
@pass_session
def vvol_delete(s: Session, ref: str, deferred: bool, generation: int | None) -> None:
    """Delete a vvol (refused while snapshots or linked clones depend on it, unless
    --deferred)."""
    s.client.vvol_delete(ref, generation, deferred)


@vvol.command("extend")
@click.argument("ref")
@click.option("--size", required=True, help="New size (grow only).")
@generation_option
@json_option
@pass_session
def vvol_extend(s: Session, ref: str, size: str, generation: int | None, as_json: bool) -> None:
    """Grow a vvol."""
    _result(s.client.vvol_extend(ref, size, generation), as_json, quiet_id=False)


@vvol.command("meta")
@click.argument("ref")
@click.argument("pairs", nargs=-1, required=True)
@generation_option
@json_option
@pass_session
def vvol_meta(
    s: Session, ref: str, pairs: tuple[str, ...], generation: int | None, as_json: bool
) -> None:
    """Set metadata KEY=VALUE (an empty VALUE removes KEY)."""
    result = s.client.vvol_meta(ref, list(pairs), generation)
    output.show(result if as_json else result["metadata"], as_json)


@vvol.command("snapshot")
@click.argument("ref")
@click.option("--name", default=None)
@json_option
@pass_session
def vvol_snapshot(s: Session, ref: str, name: str | None, as_json: bool) -> None:
    """Take a read-only point-in-time snapshot; prints its id."""
    result = run_with_progress(
        s.client, "snapshot", lambda op: s.client.vvol_snapshot(ref, name, op), as_json
    )
    _result(result, as_json)


@vvol.command("clone")
@click.argument("ref")
@click.option(
    "--linked", is_flag=True, help="Keep a dependency on the source (instant on reflink)."
)
@click.option("--container", default=None, help="Target container (default: the source's).")
@click.option("--name", default=None)
@json_option
@pass_session
def vvol_clone(
    s: Session, ref: str, linked: bool, container: str | None, name: str | None, as_json: bool
) -> None:
    """Clone a vvol or snapshot; prints the clone's id."""
    result = run_with_progress(
        s.client, "clone", lambda op: s.client.vvol_clone(ref, linked, container, name, op), as_json
    )
    _result(result, as_json)


@vvol.command("revert")
@click.argument("ref")
@click.option("--to", "to", required=True, help="Snapshot to revert to (newer ones are kept).")
@generation_option
@json_option
@pass_session
def vvol_revert(s: Session, ref: str, to: str, generation: int | None, as_json: bool) -> None:
    """Revert a vvol to one of its snapshots."""
    result = run_with_progress(
        s.client, "revert", lambda op: s.client.vvol_revert(ref, to, generation, op), as_json
    )
    _result(result, as_json, quiet_id=False)


@vvol.command("move")
@click.argument("ref")
@click.option("--container", required=True)
@json_option
@pass_session
def vvol_move(s: Session, ref: str, container: str, as_json: bool) -> None:
    """Move a vvol and its snapshots to another container."""
    result = run_with_progress(
        s.client, "move", lambda op: s.client.vvol_move(ref, container, op), as_json
    )
    _result(result, as_json, quiet_id=False)


@vvol.command("bitmap")
@click.argument("ref")
@click.option("--base", default=None, help="Report chunks that differ from this vvol.")
@click.option("--chunk", default=None, help="Chunk size (power of two, default 64K).")
@json_option
@pass_session
def vvol_bitmap(s: Session, ref: str, base: str | None, chunk: str | None, as_json: bool) -> None:
    """Allocated chunks, or with --base the chunks that differ."""
    result = s.client.vvol_bitmap(ref, base, chunk)
    if as_json:
        output.emit_json(result)
        return
    click.echo(
        f"# {len(result['ranges'])} ranges, {result['bytes']} bytes, "
        f"chunk {result['chunk']}, method {result['method']}"
    )
    for off, length in result["ranges"]:
        click.echo(f"{off}\t{length}")


@vvol.command("copy-diffs")
@click.argument("src")
@click.option("--base", required=True, help="What SRC is compared against.")
@click.option("--to", "to", required=True, help="Destination vvol (holds BASE's data).")
@json_option
@pass_session
def vvol_copy_diffs(s: Session, src: str, base: str, to: str, as_json: bool) -> None:
    """Copy into TO only what SRC changed relative to BASE."""
    result = run_with_progress(
        s.client, "copy-diffs", lambda op: s.client.vvol_copy_diffs(src, base, to, op), as_json
    )
    output.show(result, as_json)
