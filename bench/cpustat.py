"""CPU seconds a process tree used, read from /proc (for "where the time goes")."""

from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")


def _fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` (with its reaped children) and of its live children."""
    own = _fields(root)
    if own is None:
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 (1-based): 11-14 from state on
    total = sum(int(x) for x in own[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == root:
            continue
        child = _fields(int(entry))
        if child is not None and int(child[1]) == root:  # field 4: ppid
            total += int(child[11]) + int(child[12])
    return total / TICK
