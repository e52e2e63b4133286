"""Running a command from a test: output captured as text, one minute at most."""

from __future__ import annotations

import subprocess


def run(*argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; with ``ok`` (the default) it must exit 0."""
    out = subprocess.run(
        argv, capture_output=True, text=True, errors="replace", check=False, timeout=60
    )
    if ok:
        assert out.returncode == 0, f"{argv}: {out.stdout} {out.stderr}"
    return out
