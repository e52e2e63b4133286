"""Running a command from a test: output captured as text, one minute at most; and
waiting for a condition."""

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
