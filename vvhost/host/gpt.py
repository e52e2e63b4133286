"""Move a GPT's backup header to the end of a grown disk (pyparted / libparted).

After a disk grows, its GPT still ends where the disk used to end: the backup
header sits in the middle and the new space is unusable.  libparted notices on
reading and offers to fix it; we answer "fix" and write the table back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidInput

PED_EXCEPTION_FIX = 1  # libparted's option bit for "Fix"


def fix_gpt(path: str) -> dict[str, Any]:
    """Rewrite ``path``'s GPT so that it spans the whole disk; returns what was done."""
    import _ped
    import parted

    if not os.path.exists(path):
        raise InvalidInput(
            detail=f"{path} is not reachable from this host; run this where the array is"
        )
    asked: list[str] = []

    def answer(_kind: int, options: int, message: str | None = None, *_: Any) -> int:
        asked.append(message or "")
        if options & PED_EXCEPTION_FIX:
            return int(_ped.EXCEPTION_RESOLVE_FIX)
        return int(_ped.EXCEPTION_RESOLVE_UNHANDLED)

    parted.register_exn_handler(answer)
    try:
        device = parted.getDevice(path)
        try:
            disk = parted.newDisk(device)
        except Exception as exc:  # pyparted raises several unrelated types here
            raise InvalidInput(detail=f"{path} holds no readable partition table: {exc}") from None
        if disk.type != "gpt":
            raise InvalidInput(detail=f"{path} has a {disk.type} partition table, not GPT")
        fixed = any("fix the GPT" in q for q in asked)
        if fixed:
            with _quiet_stderr():  # libparted runs `udevadm settle`, absent on plain hosts
                disk.commit()
        return {"path": path, "fixed": fixed, "sectors": device.length}
    finally:
        parted.clear_exn_handler()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
