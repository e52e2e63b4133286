"""``vvhost convert ...``: a vvol's snapshots to a qcow2 chain and back.

The conversion runs in this process, next to the vvol files (see
:mod:`vvhost.convert`); the control plane gives the bitmaps and makes the vvols.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from .. import convert as conv
from ..units import human
from . import output
from .base import Session, json_option, pass_session


@contextmanager
def _bar(label: str, quiet: bool) -> Iterator[conv.Progress | None]:
    """A progress bar over bytes on a terminal (none with --json or without a tty)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = click.progressbar(
                length=max(total, 1), label=label, file=sys.stderr
            )
            bar.__enter__()
        bar.update(max(0, done - bar.pos))

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)


@click.group()
def convert() -> None:
    """Convert between a vvol's snapshots and a qcow2 chain."""


@convert.command("cow-to-redo")
@click.argument("ref")
@click.option("--to", "to", required=True, help="New or empty directory for the chain.")
@click.option("--verify", is_flag=True, help="qemu-img compare every point with its vvol.")
@json_option
@pass_session
def cow_to_redo(s: Session, ref: str, to: str, verify: bool, as_json: bool) -> None:
    """Write REF's snapshots (oldest first) and current state as a qcow2 chain."""
    with _bar("cow-to-redo", as_json) as progress:
        layers = conv.cow_to_redo(s.client, ref, to, verify=verify, progress=progress)
    if as_json:
        output.emit_json([layer.to_dict() for layer in layers])
        return
    rows = [
        {
            "file": os.path.basename(layer.file),
            "point": layer.snapshot or layer.point,
            "changed": human(layer.changed_bytes),
            "data": human(layer.data_bytes),
            "zero": human(layer.zero_bytes),
            "written": human(layer.bytes_written),
        }
        for layer in layers
    ]
    output.table(rows, ["file", "point", "changed", "data", "zero", "written"])
    if verify:
        click.echo(f"verified: {len(layers)} points equal their vvols")


@convert.command("redo-to-cow")
@click.argument("top", type=click.Path(dir_okay=True))
@click.option("--container", default=None, help="Container for the new vvol.")
@click.option("--datastore", default=None, help="Datastore for the new vvol (by its rule).")
@click.option("--name", default=None, help="Name of the new vvol (snapshots: NAME@POINT).")
@json_option
@pass_session
def redo_to_cow(
    s: Session,
    top: str,
    container: str | None,
    datastore: str | None,
    name: str | None,
    as_json: bool,
) -> None:
    """Make a new vvol from TOP's qcow2 chain: one snapshot per lower layer."""
    if not container and not datastore:
        raise click.UsageError("say where: --container C or --datastore D")
    with _bar("redo-to-cow", as_json) as progress:
        result = conv.redo_to_cow(
            s.client, top, container=container, datastore=datastore, name=name, progress=progress
        )
    if as_json:
        output.emit_json(result)
        return
    base = result["vvol"]
    output.keyvalues(
        {
            "id": base["id"],
            "name": base["name"],
            "container": base["container"],
            "size": base["size"],
            "snapshots": [snap["name"] or snap["id"] for snap in result["snapshots"]],
            "path": base["path"],
        }
    )
