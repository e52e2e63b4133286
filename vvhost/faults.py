"""Every crash point of every multi-step operation, in one table.

Crash tests stop a process at a named step and kill it with SIGKILL; the next
command (or the next start of the control plane) must finish the operation
forward or back.  Each step is declared here once, so the tests can enumerate
them all and report how many they cover:

    side            op               step              who stops there
    control-plane   "create"         "file-created"    vvhost serve (waits to be killed)
    host            "vm-snapshot"    "cut"             the vvhost CLI (kills itself)

Control plane: ``VVHOST_FAULT_AT=op:step`` makes ``vvhost serve`` write the
step into STATE/fault-reached and wait there to be killed (with
``VVHOST_FAULT_SIGNAL=STOP`` it stops itself there instead, as a frozen process
would, and goes on after SIGCONT).  Host side:
``VVHOST_HOST_FAULT_AT=op:step`` makes the vvhost command kill itself there.
Naming a step that is not declared is a programming error (``UnknownFaultPoint``).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

FAULT_ENV = "VVHOST_FAULT_AT"
FAULT_SIGNAL_ENV = "VVHOST_FAULT_SIGNAL"
HOST_FAULT_ENV = "VVHOST_HOST_FAULT_AT"
HOST_FAULT_SIGNAL_ENV = "VVHOST_HOST_FAULT_SIGNAL"
FAULT_MARK = "fault-reached"

CONTROL_PLANE = "control-plane"
HOST = "host"


@dataclass(frozen=True)
class FaultPoint:
    side: str
    op: str
    step: str

    @property
    def name(self) -> str:
        return f"{self.op}:{self.step}"


class UnknownFaultPoint(RuntimeError):
    pass


_POINTS: tuple[FaultPoint, ...] = tuple(
    FaultPoint(CONTROL_PLANE, op, step)
    for op, step in (
        ("create", "file-created"),
        ("extend", "begin"),
        ("extend", "resized"),
        ("delete", "begin"),
        ("delete", "file-removed"),
        ("snapshot-group", "committed"),
        ("snapshot", "copied"),
        ("clone", "copied"),
        ("revert", "staged"),
        ("revert", "committed"),
        ("revert", "replaced"),
        ("move", "copied"),
        ("relocate", "relocated"),
        ("copy-diffs", "begin"),
        ("copy-diffs", "copying"),
        ("bind", "attached"),
        ("rebind", "attached"),
        ("fence", "marked"),
    )
) + tuple(
    FaultPoint(HOST, op, step)
    for op, step in (
        ("vm-snapshot", "prepared"),
        ("vm-snapshot", "cut"),
        ("vm-revert", "safety"),
        ("vm-revert", "one-reverted"),
        ("redo-snapshot", "switched"),
        ("redo-delete", "merged"),
        ("move-storage", "points-copied"),
        ("move-storage", "mirror-ready"),
        ("move-storage", "pivoted"),
        ("move-storage", "committed"),
        ("vm-lease", "acquired"),
    )
)


def points(side: str | None = None) -> list[FaultPoint]:
    """Every declared crash point (of one side)."""
    return [p for p in _POINTS if side is None or p.side == side]


def _declared(side: str, op: str, step: str) -> None:
    if FaultPoint(side, op, step) not in _POINTS:
        raise UnknownFaultPoint(f"crash point {op}:{step} ({side}) is not declared in faults.py")


def control_plane_fault(fault_at: str | None, state_dir: str, op: str, step: str) -> None:
    """In ``vvhost serve``: wait here to be killed when ``fault_at`` names this step."""
    _declared(CONTROL_PLANE, op, step)
    if fault_at != f"{op}:{step}":
        return
    with open(os.path.join(state_dir, FAULT_MARK), "w", encoding="utf-8") as fh:
        fh.write(f"{op}:{step}\n")
    if os.environ.get(FAULT_SIGNAL_ENV) == "STOP":
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen until SIGCONT, then on from here
        return
    while True:  # wait here to be killed
        time.sleep(3600)


def host_fault(op: str, step: str) -> None:
    """In a host-side command: kill this process (SIGKILL) when told to stop here, or
    freeze it (SIGSTOP, ``VVHOST_HOST_FAULT_SIGNAL=STOP``) so a test can run another
    command meanwhile and let this one go on (SIGCONT)."""
    _declared(HOST, op, step)
    if os.environ.get(HOST_FAULT_ENV) == f"{op}:{step}":
        stop = os.environ.get(HOST_FAULT_SIGNAL_ENV) == "STOP"
        os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)
