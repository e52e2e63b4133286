"""``vvhost vm ...``, ``vvhost host init`` and ``vvhost hook ...``: the host side."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import click

from ..failover import split_servers
from ..host.config import DEFAULT_PATH, HostConfig
from ..host.handles import PROTOCOLS
from ..host.vms import VmManager, VmSpec
from . import output
from .base import json_option
from .binding import host

conf_option = click.option(
    "--host-conf",
    envvar="VVHOST_HOST_CONF",
    default=DEFAULT_PATH,
    show_default=True,
    help="This host's configuration.",
)
connect_option = click.option(
    "--connect", "uri", default=None, help="libvirt URI (default: the host configuration's)."
)


_WAIT: ContextVar[float | None] = ContextVar("lease_wait", default=None)


def wait_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--wait [--wait-timeout S]``: when another command holds the VM, wait for it
    (instead of refusing with "busy")."""

    @functools.wraps(fn)
    def command(*args: Any, wait: bool, wait_timeout: float, **kwargs: Any) -> Any:
        _WAIT.set(wait_timeout if wait else None)
        return fn(*args, **kwargs)

    command = click.option(
        "--wait-timeout",
        type=click.FloatRange(min=0),
        default=600.0,
        show_default=True,
        help="With --wait: give up (busy) after this many seconds.",
    )(command)
    return click.option(
        "--wait", is_flag=True, help="If another command is busy with the VM, wait for it."
    )(command)


@contextmanager
def manager(host_conf: str, uri: str | None) -> Iterator[VmManager]:
    conf = HostConfig.load(host_conf)
    client = conf.client()
    vms = VmManager(conf, client, uri)
    vms.lease_wait = _WAIT.get()
    try:
        yield vms
    finally:
        vms.close()
        client.close()


@host.command("init")
@click.argument("name")
@click.option(
    "--server",
    "servers",
    multiple=True,
    default=["unix:///run/vvhost/vvhost.sock"],
    show_default=True,
    help="Control plane: unix:///PATH or https://HOST:PORT; several replicas: repeat the "
    "option or separate them with commas.",
)
@click.option("--token-file", default=None)
@click.option("--ca", default=None)
@click.option(
    "--protocol", default="iscsi", show_default=True, type=click.Choice(sorted(PROTOCOLS))
)
@click.option("--pe", default=None, help="Always use this endpoint.")
@click.option("--libvirt", "libvirt_uri", default="qemu:///system", show_default=True)
@click.option("--path", default=DEFAULT_PATH, show_default=True)
def host_init(
    name: str,
    servers: tuple[str, ...],
    token_file: str | None,
    ca: str | None,
    protocol: str,
    pe: str | None,
    libvirt_uri: str,
    path: str,
) -> None:
    """Write this host's configuration."""
    HostConfig(
        name=name,
        server=", ".join(split_servers(servers)),
        token_file=token_file,
        ca=ca,
        protocol=protocol,
        pe=pe,
        libvirt=libvirt_uri,
    ).save(path)
    click.echo(path)


@click.group()
def vm() -> None:
    """VMs whose disks are vvols (libvirt domains)."""


@vm.command("create")
@click.argument("name")
@click.option("--datastore", required=True)
@click.option("--memory", type=int, required=True, help="MiB.")
@click.option("--vcpus", type=int, default=1, show_default=True)
@click.option("--disk", "disks", multiple=True, help="A new disk of SIZE (repeatable).")
@click.option(
    "--disk-from",
    "disk_from",
    multiple=True,
    help="A disk imported from a raw/qcow2 IMAGE (repeatable).",
)
@click.option("--kernel", default=None)
@click.option("--initrd", default=None)
@click.option("--cmdline", default=None)
@click.option("--protocol", default=None, type=click.Choice(sorted(PROTOCOLS)))
@click.option("--serial-log", default=None, help="Write the serial console to this file.")
@conf_option
@connect_option
@json_option
def vm_create(
    name: str,
    datastore: str,
    memory: int,
    vcpus: int,
    disks: tuple[str, ...],
    disk_from: tuple[str, ...],
    kernel: str | None,
    initrd: str | None,
    cmdline: str | None,
    protocol: str | None,
    serial_log: str | None,
    host_conf: str,
    uri: str | None,
    as_json: bool,
) -> None:
    """Create a config vvol and a vvol per disk, and define the domain."""
    kernel, initrd, log = (os.path.abspath(p) if p else None for p in (kernel, initrd, serial_log))
    spec = VmSpec(
        name=name,
        datastore=datastore,
        memory=memory,
        vcpus=vcpus,
        disks=disks,
        disk_from=disk_from,
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        protocol=protocol,
        serial_log=log,
    )
    with manager(host_conf, uri) as vms:
        output.show(vms.create(spec, progress=sys.stderr.isatty() and not as_json), as_json)


def _simple(name: str, help_text: str) -> None:
    @vm.command(name, help=help_text)
    @click.argument("vm_name")
    @conf_option
    @connect_option
    @json_option
    def command(vm_name: str, host_conf: str, uri: str | None, as_json: bool) -> None:
        with manager(host_conf, uri) as vms:
            result = getattr(vms, name)(vm_name)
            if result is not None:
                output.show(result, as_json)


_simple("show", "Show a VM, its vvols and bindings.")
_simple("start", "Start a VM (the hook binds its vvols).")
_simple("refresh", "Point the definition's disks at where their vvols bind now.")


@vm.command("stop")
@click.argument("vm_name")
@click.option("--force", is_flag=True, help="Power off at once.")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@conf_option
@connect_option
@json_option
def vm_stop(
    vm_name: str, force: bool, timeout: float, host_conf: str, uri: str | None, as_json: bool
) -> None:
    """Shut a VM down (then power it off after --timeout)."""
    with manager(host_conf, uri) as vms:
        output.show(vms.stop(vm_name, force, timeout), as_json)


@vm.command("delete")
@click.argument("vm_name")
@conf_option
@connect_option
@wait_option
def vm_delete(vm_name: str, host_conf: str, uri: str | None) -> None:
    """Undefine a stopped VM and delete its vvols."""
    from ..host.vmop import VmOps

    with manager(host_conf, uri) as vms, VmOps(vms).leased(vm_name, "vm-delete"):
        vms.delete(vm_name)


@vm.command("lease")
@click.argument("vm_name")
@conf_option
@connect_option
@json_option
def vm_lease(vm_name: str, host_conf: str, uri: str | None, as_json: bool) -> None:
    """Show which command, if any, is busy with a VM (its lease)."""
    from ..host.vmop import VmOps

    with manager(host_conf, uri) as vms:
        info = VmOps(vms).lease(vm_name)
    if as_json:
        output.emit_json(info)
    elif info["lease"] is None:
        click.echo(f"{vm_name}: free")
    else:
        held = info["lease"]
        click.echo(
            f"{vm_name}: busy: {held['op']} since {held['since_utc']} on {held['host']} "
            f"(pid {held['pid']}, expires in {held['expires_in']:.0f} s unless renewed)"
        )


@vm.command("list")
@conf_option
@connect_option
@json_option
def vm_list(host_conf: str, uri: str | None, as_json: bool) -> None:
    """List the VMs on vvols of this host's libvirt."""
    with manager(host_conf, uri) as vms:
        rows = vms.listing()
    output.emit_json(rows) if as_json else output.table(
        rows, ["name", "state", "datastore", "disks"]
    )


@vm.command("register")
@click.option("--config-vvol", required=True)
@conf_option
@connect_option
@json_option
def vm_register(config_vvol: str, host_conf: str, uri: str | None, as_json: bool) -> None:
    """Define a VM on this host from its config vvol alone."""
    with manager(host_conf, uri) as vms:
        output.show(vms.register(config_vvol), as_json)


@click.group()
def hook() -> None:
    """The libvirt hook."""


@hook.command("install")
@click.option("--hooks-dir", default="/etc/libvirt/hooks", show_default=True)
@click.option("--libvirtd-pid", type=int, default=None, help="Tell this libvirtd (SIGHUP).")
@conf_option
def hook_install(hooks_dir: str, libvirtd_pid: int | None, host_conf: str) -> None:
    """Install the hook into libvirt's hooks directory."""
    from ..host.install import install

    click.echo(install(hooks_dir, host_conf, libvirtd_pid))


@hook.command("uninstall")
@click.option("--hooks-dir", default="/etc/libvirt/hooks", show_default=True)
@click.option("--libvirtd-pid", type=int, default=None)
def hook_uninstall(hooks_dir: str, libvirtd_pid: int | None) -> None:
    """Remove the hook."""
    from ..host.install import uninstall

    uninstall(hooks_dir, libvirtd_pid)


@hook.command("qemu", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@conf_option
def hook_qemu(args: tuple[str, ...], host_conf: str) -> None:
    """What libvirt runs: DOMAIN OP SUBOP EXTRA, domain XML on stdin."""
    from ..host.hook import run

    sys.exit(run(list(args), sys.stdin, sys.stdout, sys.stderr, host_conf))
