"""Lab daemons recorded by PID, so a crashed run can be cleaned up by PID.

One file per daemon in a lab's ``pids/`` directory::

    pids/osd.0.pid
      4242                                   line 1: the daemon's PID
      ceph-osd -f -i 0 -c /tmp/x/ceph.conf   line 2: its command line (shell-quoted)
      4100 8812345                           line 3: owner PID and owner start time

``reap(dir)`` signals a PID only while /proc/PID/cmdline is still the recorded
command line, so a reused PID is never touched; ``reap_orphans(dirs)`` reaps
only labs whose owner process (PID + start time) is gone, so a lab another
test session still uses is left alone.  ``spawn`` starts a daemon in its own
session with PR_SET_PDEATHSIG, so it also gets SIGTERM when its starter dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import time

_PR_SET_PDEATHSIG = 1


def spawn(
    piddir: str,
    name: str,
    argv: list[str],
    log: str,
    cwd: str,
    die_with_parent: bool = True,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (stdout+stderr appended to ``log``) and record it as ``piddir/NAME.pid``;
    with ``user``, as that user (its own group, no supplementary groups)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
            preexec_fn=_die_with_parent if die_with_parent else None,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    me = os.getpid()
    record = f"{proc.pid}\n{shlex.join(argv)}\n{me} {starttime(me)}\n"
    path = os.path.join(piddir, f"{name}.pid")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(record)
    return proc


def stop(
    piddir: str, name: str, proc: subprocess.Popen[bytes], grace: float, sig: int = signal.SIGTERM
) -> None:
    """Signal a daemon ``spawn`` started (SIGTERM), wait ``grace`` seconds, then SIGKILL;
    forget it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(piddir, f"{name}.pid"))


def reap(workdir: str, grace: float = 15.0) -> list[int]:
    """Stop the daemons a crashed run left under ``workdir``, from its pid files.

    A PID is signalled only while its /proc cmdline is the recorded command
    line (so a reused PID is left alone). Returns the PIDs that were stopped.
    """
    piddir = os.path.join(workdir, "pids")
    stopped: list[int] = []
    names = sorted(os.listdir(piddir), reverse=True) if os.path.isdir(piddir) else []
    for entry in names:  # osd, mon, mgr: reverse name order stops the OSD first
        path = os.path.join(piddir, entry)
        record = _read_pidfile(path)
        if record and _cmdline(record[0]) == record[1]:
            pid = record[0]
            os.kill(pid, signal.SIGTERM)
            if not _gone(pid, grace):
                os.kill(pid, signal.SIGKILL)
                _gone(pid, grace)
            stopped.append(pid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return stopped


def reap_orphans(workdirs: list[str], grace: float = 15.0) -> list[int]:
    """``reap`` each lab in ``workdirs`` whose starting process is gone.

    Labs whose owner (PID and start time, recorded in the pid files) still
    runs are left alone: another test session may be using them.
    """
    stopped: list[int] = []
    for workdir in workdirs:
        piddir = os.path.join(workdir, "pids")
        if not os.path.isdir(piddir):
            continue
        owners = {
            record[2]
            for entry in os.listdir(piddir)
            if (record := _read_pidfile(os.path.join(piddir, entry)))
        }
        if not any(starttime(pid) == start for pid, start in owners):
            stopped += reap(workdir, grace)
    return stopped


def _read_pidfile(path: str) -> tuple[int, list[str], tuple[int, str]] | None:
    """(PID, command line, (owner PID, owner start time)) or None if unreadable."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        owner_pid, owner_start = lines[2].split()
        return int(lines[0]), shlex.split(lines[1]), (int(owner_pid), owner_start)
    except (OSError, ValueError, IndexError):
        return None


def starttime(pid: int) -> str:
    """The start time of ``pid`` (clock ticks since boot), "" when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM me when my parent thread exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return []


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False
