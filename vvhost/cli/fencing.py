"""``vvhost host fence|unfence`` and ``vvhost vm recover``."""

from __future__ import annotations

import click

from ..errors import InvalidInput
from . import output
from .base import Session, json_option, pass_session
from .binding import host
from .vm import conf_option, connect_option, manager, vm


@host.command("fence")
@click.argument("name")
@json_option
@pass_session
def host_fence(s: Session, name: str, as_json: bool) -> None:
    """Cut a host off: endpoints refuse it, its bindings are fenced, its VM leases
    released, its token refused until `host unfence`."""
    output.show(s.client.host_fence(name), as_json)


@host.command("unfence")
@click.argument("name")
@json_option
@pass_session
def host_unfence(s: Session, name: str, as_json: bool) -> None:
    """Let a fenced host back in: its fenced bindings are dropped, it gets new NBD
    credentials and its token works again (its VMs start again as usual)."""
    output.show(s.client.host_unfence(name), as_json)


@vm.command("recover")
@click.argument("config_vvol")
@click.option("--on", "on", default=None, help="This host's name (checked against its config).")
@conf_option
@connect_option
@json_option
def vm_recover(
    config_vvol: str, on: str | None, host_conf: str, uri: str | None, as_json: bool
) -> None:
    """Start a VM of a fenced host here, from its config vvol (refused while a host
    that is not fenced has its vvols bound)."""
    from ..host.vmrecover import recover

    with manager(host_conf, uri) as vms:
        if on is not None and on != vms.conf.name:
            raise InvalidInput(
                detail=f"--on {on}: this host is {vms.conf.name}; run it on {on} itself"
            )
        output.show(recover(vms, config_vvol), as_json)
