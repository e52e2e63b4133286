"""Running a command from a test: output captured as text, one minute at most;
waiting for a condition; whether a process runs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def run(*argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; with ``ok`` (the default) it must exit 0."""
    out = subprocess.run(
        argv, capture_output=True, text=True, errors="replace", check=False, timeout=60
    )
    if ok:
        assert out.returncode == 0, f"{argv}: {out.stdout} {out.stderr}"
    return out


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``cond`` until it holds (True) or ``timeout`` s passed (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def pid_running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an exited daemon its parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except OSError:
        return False
