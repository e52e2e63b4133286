"""``vvhost vm snapshot|snapshots|revert|snapshot-delete|clone|extend-disk|export|import``."""

from __future__ import annotations

import os

import click

from ..host.vmop import VmOps
from ..host.vmsnapshots import VmSnapshots
from . import output
from .base import json_option
from .vm import conf_option, connect_option, manager, vm, wait_option


@vm.command("snapshot")
@click.argument("vm_name")
@click.argument("snap")
@click.option("--description", default="", help="Free text kept with the snapshot.")
@click.option("--quiesce", is_flag=True, help="Freeze the guest's filesystems (guest agent).")
@click.option(
    "--memory", is_flag=True, help="Also keep the RAM: a revert resumes the VM where it was."
)
@click.option(
    "--mode",
    type=click.Choice(["cow", "redo"]),
    default=None,
    help="Only for a VM's first snapshot: array COW or qcow2 redo layers "
    "(default: COW where the array snapshots instantly).",
)
@conf_option
@connect_option
@json_option
@wait_option
def vm_snapshot(
    vm_name: str,
    snap: str,
    description: str,
    quiesce: bool,
    memory: bool,
    mode: str | None,
    host_conf: str,
    uri: str | None,
    as_json: bool,
) -> None:
    """Snapshot every disk of a VM at one point (it may be running)."""
    with manager(host_conf, uri) as vms:
        snaps = VmSnapshots(vms)
        output.show(snaps.take(vm_name, snap, description, quiesce, mode, memory), as_json)


@vm.command("snapshots")
@click.argument("vm_name")
@click.option("--tree", is_flag=True, help="Draw the hierarchy with its branches.")
@conf_option
@connect_option
@json_option
def vm_snapshots(vm_name: str, tree: bool, host_conf: str, uri: str | None, as_json: bool) -> None:
    """List a VM's snapshots."""
    with manager(host_conf, uri) as vms:
        snaps = VmSnapshots(vms)
        if as_json:
            output.emit_json(snaps.listing(vm_name))
        elif tree:
            click.echo("\n".join(snaps.tree(vm_name)))
        else:
            info = snaps.listing(vm_name)
            rows = [
                {**p, "current": "*" if p["name"] == info["current"] else ""}
                for p in info["points"]
            ]
            output.table(rows, ["current", "name", "parent", "mode", "created", "description"])


@vm.command("revert")
@click.argument("vm_name")
@click.argument("snap")
@click.option("--start", is_flag=True, help="Start the VM afterwards.")
@click.option("--force", is_flag=True, help="Power a running VM off first.")
@conf_option
@connect_option
@json_option
@wait_option
def vm_revert(
    vm_name: str,
    snap: str,
    start: bool,
    force: bool,
    host_conf: str,
    uri: str | None,
    as_json: bool,
) -> None:
    """Revert a stopped VM to any snapshot, keeping every other one."""
    with manager(host_conf, uri) as vms:
        output.show(VmSnapshots(vms).revert(vm_name, snap, start, force), as_json)


@vm.command("snapshot-delete")
@click.argument("vm_name")
@click.argument("snap")
@conf_option
@connect_option
@json_option
@wait_option
def vm_snapshot_delete(
    vm_name: str, snap: str, host_conf: str, uri: str | None, as_json: bool
) -> None:
    """Delete a snapshot (the VM may be running); what others need is kept."""
    with manager(host_conf, uri) as vms:
        output.show(VmSnapshots(vms).delete(vm_name, snap), as_json)


@vm.command("clone")
@click.argument("vm_name")
@click.argument("new")
@click.option("--snapshot", default=None, help="Clone the VM as this snapshot holds it.")
@click.option("--linked", is_flag=True, help="Share unchanged data with the source (COW).")
@click.option("--serial-log", default=None, help="The clone's serial log file.")
@conf_option
@connect_option
@json_option
@wait_option
def vm_clone(
    vm_name: str,
    new: str,
    snapshot: str | None,
    linked: bool,
    serial_log: str | None,
    host_conf: str,
    uri: str | None,
    as_json: bool,
) -> None:
    """Make a new VM from a VM (or one of its snapshots): full or linked clone."""
    from ..host.vmclone import VmCloner

    log = os.path.abspath(serial_log) if serial_log else None
    with manager(host_conf, uri) as vms:
        output.show(VmCloner(vms).clone(vm_name, new, snapshot, linked, log), as_json)


@vm.command("extend-disk")
@click.argument("vm_name")
@click.argument("target")
@click.option("--size", required=True, help="The new size (e.g. 20G).")
@click.option("--fix-gpt", is_flag=True, help="Move the GPT backup header to the new end.")
@conf_option
@connect_option
@json_option
@wait_option
def vm_extend_disk(
    vm_name: str,
    target: str,
    size: str,
    fix_gpt: bool,
    host_conf: str,
    uri: str | None,
    as_json: bool,
) -> None:
    """Grow a VM's disk; a running guest sees the new size at once."""
    with manager(host_conf, uri) as vms, VmOps(vms).leased(vm_name, "vm-extend-disk"):
        output.show(vms.extend_disk(vm_name, target, size, fix_gpt), as_json)


@vm.command("export")
@click.argument("vm_name")
@click.option("--to", "to", required=True, help="An empty or new directory.")
@conf_option
@connect_option
@json_option
@wait_option
def vm_export(vm_name: str, to: str, host_conf: str, uri: str | None, as_json: bool) -> None:
    """Write a stopped VM as qcow2 chains (one file per snapshot) and a domain XML
    that plain libvirt boots."""
    from ..host.vmexport import VmPorter

    with manager(host_conf, uri) as vms:
        output.show(VmPorter(vms).export(vm_name, os.path.abspath(to)), as_json)


@vm.command("import")
@click.argument("src")
@click.option("--datastore", required=True)
@click.option("--name", default=None, help="The new VM's name (default: the exported one).")
@conf_option
@connect_option
@json_option
def vm_import(
    src: str, datastore: str, name: str | None, host_conf: str, uri: str | None, as_json: bool
) -> None:
    """Make a VM on vvols from a `vm export` directory, snapshots included."""
    from ..host.vmexport import VmPorter

    with manager(host_conf, uri) as vms:
        output.show(VmPorter(vms).import_(os.path.abspath(src), datastore, name), as_json)
