"""Why a VM is paused, and going on after a pause for want of space.

A disk whose array is full makes QEMU stop the guest (the error policy of
host/diskpolicy.py); libvirt tells why::

    virDomainGetState       PAUSED / VIR_DOMAIN_PAUSED_IOERROR
    virDomainGetDiskErrors  {"vda": VIR_DOMAIN_DISK_ERROR_NO_SPACE | _UNSPEC}
                            (QEMU's io-status of each disk, reset by "cont")

    state shown             "paused: no space"   a disk reports no space, or failed
                                                 while its vvol's array has less than
                                                 LOW_FREE left (tgtd reports a full
                                                 backing file as a plain I/O error)
                            "paused: I/O error"  a disk failed otherwise
                            "paused: by user", "paused: migrating", ...

``resume`` continues such a VM: QEMU issues the failed requests again, so the
guest goes on where it stopped with nothing lost. If the array is still full the
VM pauses again at once; ``when_space`` keeps trying until it stays running.

Where a pause for space is seen (``state_of``, ``resume``) the ``SpaceHook``
given is called with a ``SpacePause``: the one place to raise an event for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

from ..errors import InvalidInput, VvhostError
from . import domainxml as dx


class PausedAgain(VvhostError):
    code = "paused-again"
    status = 507
    exit_code = 4
    template = "VM {vm} paused again: {detail}"


LOW_FREE = 64 << 20  # an array with less free than this is full for a failed write
NO_SPACE = "no space"
IO_ERROR = "I/O error"

_REASONS = {
    libvirt.VIR_DOMAIN_PAUSED_USER: "by user",
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: "migrating",
    libvirt.VIR_DOMAIN_PAUSED_SAVE: "saving",
    libvirt.VIR_DOMAIN_PAUSED_DUMP: "dumping",
    libvirt.VIR_DOMAIN_PAUSED_WATCHDOG: "watchdog",
    libvirt.VIR_DOMAIN_PAUSED_FROM_SNAPSHOT: "from snapshot",
    libvirt.VIR_DOMAIN_PAUSED_SHUTTING_DOWN: "shutting down",
    libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT: "snapshot",
    libvirt.VIR_DOMAIN_PAUSED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PAUSED_STARTING_UP: "starting up",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: "post-copy migration",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: "post-copy migration failed",
}
# pauses that vvhost vm resume may end: the others belong to a running operation
RESUMABLE = {NO_SPACE, IO_ERROR, "by user", "unknown"}

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
}


@dataclass(frozen=True)
class Pause:
    """Why a VM is paused: ``reason`` (``NO_SPACE``, ``IO_ERROR``, "by user", ...)
    and, after an I/O error, each failing disk's error."""

    reason: str
    disks: dict[str, str]  # target -> NO_SPACE | IO_ERROR

    @property
    def for_space(self) -> bool:
        return self.reason == NO_SPACE


@dataclass(frozen=True)
class SpacePause:
    """A VM seen paused because its array is full (what an event reports)."""

    vm: str
    disks: list[str]  # the targets that reported no space


SpaceHook = Callable[[SpacePause], None]


def pause_of(dom: libvirt.virDomain, client: Any = None) -> Pause | None:
    """Why ``dom`` is paused; None when it is not paused. With ``client`` (the
    control plane), a disk that failed with an unspecified error counts as out of
    space when its vvol's array is nearly full."""
    state, reason = dom.state()
    if state != libvirt.VIR_DOMAIN_PAUSED:
        return None
    if reason != libvirt.VIR_DOMAIN_PAUSED_IOERROR:
        return Pause(_REASONS.get(reason, "unknown"), {})
    disks = {
        target: NO_SPACE if code == libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE else IO_ERROR
        for target, code in _disk_errors(dom).items()
        if code != libvirt.VIR_DOMAIN_DISK_ERROR_NONE
    }
    unclear = [t for t, e in disks.items() if e == IO_ERROR]
    if unclear and client is not None:
        for target in _on_full_arrays(dom, client, unclear):
            disks[target] = NO_SPACE
    return Pause(NO_SPACE if NO_SPACE in disks.values() else IO_ERROR, disks)


def _on_full_arrays(dom: libvirt.virDomain, client: Any, targets: list[str]) -> list[str]:
    """Those of ``targets`` whose vvol's array has less than ``LOW_FREE`` left
    (a disk whose array cannot be asked is not counted)."""
    try:
        meta = dx.meta(dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    except (libvirt.libvirtError, VvhostError):
        return []
    if meta is None:
        return []
    full = []
    for target in targets:
        vvol = meta.disks.get(target)
        if not vvol:
            continue
        try:
            free = client.array(client.vvol(vvol)["array"]).get("free")
        except (VvhostError, KeyError):
            continue
        if isinstance(free, int) and free < LOW_FREE:
            full.append(target)
    return full


def _disk_errors(dom: libvirt.virDomain) -> dict[str, int]:
    try:
        return dict(dom.diskErrors())
    except libvirt.libvirtError:  # the domain went away meanwhile
        return {}


def noticed(dom: libvirt.virDomain, pause: Pause | None, hook: SpaceHook | None) -> None:
    """Hand a pause for space to ``hook`` (VM paused for space: raise its event here)."""
    if hook is not None and pause is not None and pause.for_space:
        hook(SpacePause(dom.name(), sorted(t for t, e in pause.disks.items() if e == NO_SPACE)))


def state_of(dom: libvirt.virDomain, hook: SpaceHook | None = None, client: Any = None) -> str:
    """The state ``vm show``/``vm list`` print: "running", "paused: no space", ..."""
    pause = pause_of(dom, client)
    if pause is not None:
        noticed(dom, pause, hook)
        return f"paused: {pause.reason}"
    return _STATES.get(dom.state()[0], "other")


@dataclass(frozen=True)
class ResumePolicy:
    """``when_space``: keep trying every ``interval`` s until the VM stays running
    or ``timeout`` s have passed; ``settle``: how long a resumed VM must run without
    pausing again to count as resumed."""

    when_space: bool = False
    timeout: float = 600.0
    interval: float = 2.0
    settle: float = 1.0


def resume(
    dom: libvirt.virDomain,
    policy: ResumePolicy,
    hook: SpaceHook | None = None,
    client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Continue a VM paused for space, an I/O error or by its user; returns how
    many times it was resumed. Raises ``PausedAgain`` (the VM stays paused) when
    it pauses again and ``when_space`` did not ask to wait, or waiting timed out."""
    name = dom.name()
    pause = pause_of(dom, client)
    if pause is None:
        raise InvalidInput(detail=f"VM {name} is not paused")
    if pause.reason not in RESUMABLE:
        raise InvalidInput(
            detail=f"VM {name} is paused: {pause.reason}; the operation that paused it resumes it"
        )
    deadline = time.monotonic() + policy.timeout
    tries = 0
    while True:
        noticed(dom, pause, hook)
        try:
            dom.resume()
        except libvirt.libvirtError as exc:
            raise InvalidInput(
                detail=f"VM {name} did not resume: {exc.get_error_message()}"
            ) from None
        tries += 1
        sleep(policy.settle)
        pause = pause_of(dom, client)
        if pause is None:
            return tries
        if not policy.when_space or time.monotonic() + policy.interval > deadline:
            what = "its array is still full" if pause.for_space else pause.reason
            raise PausedAgain(vm=name, detail=what)
        sleep(policy.interval)
