"""What hosts report about their VMs: a guest paused because its array is full,
and the same guest running again.

Only the host sees a guest's pause (QEMU stops it; libvirt tells the host), so
the host reports it and the control plane records it as an event of the host's
tenant, subject ``vm:HOST/NAME``.  A report that repeats the newest event about
that VM is not recorded twice: ``vm show`` seen every few seconds on a paused
VM raises one event, and the next one only after it ran again.
"""

from __future__ import annotations

import re
from typing import Any

from ..catalog import bindrepo, eventrepo
from ..errors import InvalidInput, NotFound
from .context import Context

PAUSED = "paused-for-space"
RESUMED = "resumed"
KINDS = {PAUSED: "warning", RESUMED: "info"}
_VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_TARGET = re.compile(r"^[a-z]{2,4}[a-z0-9]{1,4}$")


def report(ctx: Context, host: str, vm: str, what: str, disks: list[str]) -> dict[str, Any]:
    """Record that ``vm`` of ``host`` was ``what`` (``PAUSED`` or ``RESUMED``);
    returns the event (the earlier one when this repeats it)."""
    if what not in KINDS:
        raise InvalidInput(detail=f"a VM event is one of {sorted(KINDS)}, not {what!r}")
    if not _VM_NAME.match(vm):
        raise InvalidInput(detail=f"{vm!r} is not a VM name")
    bad = [d for d in disks if not _TARGET.match(d)]
    if bad or len(disks) > 64:
        raise InvalidInput(detail=f"disk targets look like vda or sdb, not {bad[:3]}")
    subject = f"vm:{host}/{vm}"
    kind = f"vm.{what}"
    with ctx.db.tx() as conn:
        owner = bindrepo.get_host(conn, host)
        if owner is None:
            raise NotFound(kind="host", ref=host)
        last = eventrepo.latest(conn, subject)
        if last is not None and last.kind == kind:
            return {"event": last.id, "recorded": False}
        if last is None and what == RESUMED:
            return {"event": None, "recorded": False}  # nothing was reported paused
        if what == PAUSED:
            message = f"VM {vm} on host {host} is paused: the array of {', '.join(disks)} is full"
        else:
            message = f"VM {vm} on host {host} runs again"
        event_id = ctx.events.emit_in(
            conn,
            kind,
            message,
            severity=KINDS[what],
            subject=subject,
            fields={"host": host, "vm": vm, "disks": sorted(disks)},
            tenant=owner.tenant,
        )
    ctx.events.wake()
    return {"event": event_id, "recorded": True}
