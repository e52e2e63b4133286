"""``vvhost vm resume``: continue a VM paused because its array was full."""

from __future__ import annotations

import click

from ..host.vmpause import ResumePolicy, resume
from . import output
from .base import json_option
from .vm import conf_option, connect_option, manager, vm


@vm.command("resume")
@click.argument("vm_name")
@click.option(
    "--when-space",
    is_flag=True,
    help="If the array is still full, keep trying until the VM stays running.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="With --when-space: give up after this many seconds (the VM stays paused).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="With --when-space: seconds between tries.",
)
@conf_option
@connect_option
@json_option
def vm_resume(
    vm_name: str,
    when_space: bool,
    timeout: float,
    interval: float,
    host_conf: str,
    uri: str | None,
    as_json: bool,
) -> None:
    """Continue a VM paused for want of space (or an I/O error, or by its user); the
    writes that failed are issued again, so the guest loses nothing."""
    policy = ResumePolicy(when_space=when_space, timeout=timeout, interval=interval)
    with manager(host_conf, uri) as vms:
        resume(vms.domain(vm_name), policy, vms.on_paused_for_space, vms.client)
        vms.report_resumed(vm_name)
        output.show(vms.show(vm_name), as_json)
