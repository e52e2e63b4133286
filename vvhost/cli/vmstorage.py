"""``vvhost vm move-storage``."""

from __future__ import annotations

import click

from ..host.movestorage import StorageMover
from . import output
from .base import json_option
from .vm import conf_option, connect_option, manager, vm, wait_option


@vm.command("move-storage")
@click.argument("vm_name")
@click.option("--container", required=True, help="The container the disks move to.")
@click.option(
    "--disk", "disks", multiple=True, help="Move only this disk (repeatable; default: all)."
)
@conf_option
@connect_option
@json_option
@wait_option
def vm_move_storage(
    vm_name: str,
    container: str,
    disks: tuple[str, ...],
    host_conf: str,
    uri: str | None,
    as_json: bool,
) -> None:
    """Move a VM's disks and their snapshots to another container; a running guest
    keeps running (its disks are mirrored, then switched over)."""
    with manager(host_conf, uri) as vms:
        output.show(StorageMover(vms).move(vm_name, container, list(disks) or None), as_json)
