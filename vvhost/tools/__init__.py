"""Thin typed wrappers over the external storage tools and daemons.

Each wrapper speaks one tool's own interface and nothing more:

    tgtadm.py   tgtadm(8) command lines  ->  tgtd control socket /run/tgtd/socket.N
    qmp.py      QMP (JSON lines)         ->  a unix socket of qemu-storage-daemon
    qsd.py      block nodes, NBD exports ->  qmp.py

Any failure of a tool (non-zero exit, timeout, an error reply) is raised as
``EndpointError(tool=..., detail=...)``: backend class, HTTP 502, CLI exit 6.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from ..errors import EndpointError

__all__ = ["EndpointError", "run"]


def _first_line(text: str, prefix: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line.removeprefix(prefix).strip()
    return ""


def run(tool: str, argv: list[str], timeout: float) -> str:
    """Run ``argv`` (no shell, stdin closed) and return its stdout.

    On a non-zero exit the error's detail is the first non-empty line of stderr
    (or stdout), without the usual ``"<program>: "`` prefix; on a timeout the
    child is killed and the detail says so.
    """
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EndpointError(
            tool=tool, detail=f"timed out after {timeout:g}s: {shlex.join(argv)}", returncode=None
        ) from None
    except OSError as exc:
        raise EndpointError(
            tool=tool, detail=f"cannot run {argv[0]}: {exc.strerror}", returncode=None
        ) from None
    if proc.returncode != 0:
        prefix = os.path.basename(argv[0]) + ":"
        line = _first_line(proc.stderr, prefix) or _first_line(proc.stdout, prefix)
        detail = line or f"exit status {proc.returncode}: {shlex.join(argv)}"
        raise EndpointError(tool=tool, detail=detail, returncode=proc.returncode)
    return proc.stdout
