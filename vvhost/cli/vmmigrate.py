"""``vvhost vm migrate``: move a VM to another host that shares the control plane."""

from __future__ import annotations

import click

from ..host.migrate import migrate
from ..host.vmop import VmOps
from . import output
from .base import json_option
from .vm import conf_option, connect_option, manager, vm, wait_option


@vm.command("migrate")
@click.argument("vm_name")
@click.option(
    "--to",
    "dest_uri",
    required=True,
    help="The destination's libvirt URI as this host's libvirtd reaches it "
    "(peer to peer), e.g. qemu+tcp://kvm2/system.",
)
@click.option("--offline", is_flag=True, help="Move a stopped VM's definition.")
@click.option(
    "--migrate-uri",
    default=None,
    help="Where the destination's QEMU listens for the memory stream, e.g. tcp://10.0.0.2.",
)
@click.option(
    "--dest-host",
    default=None,
    help="The destination's vvhost host name (default: the hostname its libvirtd reports).",
)
@click.option("--bandwidth", type=int, default=None, help="Limit the memory stream (MiB/s).")
@conf_option
@connect_option
@json_option
@wait_option
def vm_migrate(
    vm_name: str,
    dest_uri: str,
    offline: bool,
    migrate_uri: str | None,
    dest_host: str | None,
    bandwidth: int | None,
    host_conf: str,
    uri: str | None,
    as_json: bool,
) -> None:
    """Migrate a running VM live (its vvols are bound for the destination there and
    unbound here after the switch), or a stopped one with --offline."""
    with manager(host_conf, uri) as vms, VmOps(vms).leased(vm_name, "vm-migrate"):
        result = migrate(
            vms,
            vm_name,
            dest_uri,
            offline=offline,
            dest_host=dest_host,
            migrate_uri=migrate_uri,
            bandwidth=bandwidth,
        )
    output.show(result, as_json)
