"""Supervise one foreground daemon (tgtd, qemu-storage-daemon) through a run directory.

    rundir/
      pid         "4242\\n"                   replaced atomically after each spawn
      cmdline     b"tgtd\\0-f\\0-C\\0...\\0"     argv exactly as /proc/4242/cmdline shows it
      daemon.log  stdout + stderr, appended  a "# vvhost: start ..." line before each spawn
      lock        flock()ed while starting or stopping

A process is "ours" only while /proc/PID/cmdline equals ``cmdline`` byte for byte
and it is not a zombie: that is how a later supervisor (after a restart, or
``stop_pidfile`` after a crash) adopts the daemon, and it never signals a PID
that has since been reused by something else. Adopted processes are pinned with
a pidfd before the check, so the signal cannot reach a newer process either.
A daemon that replaces its argv (setproctitle, or ``sh -c "exec ..."``) cannot be
adopted: spawn the real binary directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

from ..errors import VvhostError
from ..tools import EndpointError

POLL = 0.02


def _encode(argv: list[str]) -> bytes:
    return b"".join(os.fsencode(arg) + b"\0" for arg in argv)


def _is_ours(pid: int, cmdline: bytes) -> bool:
    """``pid`` exists, is not a zombie, and runs ``cmdline``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rpartition(b")")[2].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            current = fh.read()
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X") and current == cmdline


def _read_pid(rundir: str) -> int | None:
    try:
        with open(os.path.join(rundir, "pid"), encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(rundir: str) -> Iterator[None]:
    if not os.path.isdir(rundir):  # nothing to guard: never started here
        yield
        return
    fd = os.open(os.path.join(rundir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _wait_pidfd(pidfd: int, timeout: float) -> bool:
    """True once the process behind ``pidfd`` has exited (zombie or reaped)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def _stop_pid(pid: int, cmdline: bytes, timeout: float) -> bool:
    """SIGTERM, up to ``timeout`` s, SIGKILL a process that is not our child.

    Returns False when ``pid`` does not run ``cmdline`` (nothing was signalled).
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not _is_ours(pid, cmdline):  # checked after pinning: the pidfd is this process
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not _wait_pidfd(pidfd, timeout):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            _wait_pidfd(pidfd, 10.0)
    except ProcessLookupError:
        pass  # exited meanwhile
    finally:
        os.close(pidfd)
    with contextlib.suppress(ChildProcessError):  # ours after all (dropped Popen): reap
        os.waitpid(pid, os.WNOHANG)
    return True


class Daemon:
    """One daemon process: spawned and owned, or adopted from a previous supervisor."""

    def __init__(self, name: str, argv: list[str], rundir: str, ready: Callable[[], bool]) -> None:
        self.name = name
        self.argv = list(argv)
        self.rundir = rundir
        self.ready = ready
        self.adopted = False
        self._cmdline = _encode(self.argv)
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._log_from = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else self._pid

    @property
    def log_path(self) -> str:
        return os.path.join(self.rundir, "daemon.log")

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and _is_ours(self._pid, self._cmdline)

    def log_tail(self) -> str:
        """The last non-empty line the daemon logged since our start (or "")."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_from)
                lines = fh.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return next((line.strip() for line in reversed(lines) if line.strip()), "")

    def start(self, timeout: float = 10.0) -> Daemon:
        """Adopt the running daemon of ``rundir`` or spawn one; return once ``ready()``."""
        if self.alive():
            return self
        os.makedirs(self.rundir, exist_ok=True)
        with _locked(self.rundir):
            pid = _read_pid(self.rundir)
            if pid is not None and _is_ours(pid, self._cmdline):
                self._proc, self._pid, self.adopted = None, pid, True
                self._log_from = _size(self.log_path)
            else:
                self._spawn()
        self._wait_ready(timeout)
        return self

    def _spawn(self) -> None:
        _write_atomic(os.path.join(self.rundir, "cmdline"), self._cmdline)
        with open(self.log_path, "ab") as log:
            log.write(f"# vvhost: start {self.name} at {time.ctime()}\n".encode())
            log.flush()
            self._log_from = log.tell()
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            except OSError as exc:
                raise EndpointError(tool=self.name, detail=f"cannot run: {exc}") from None
        self._pid, self.adopted = None, False
        _write_atomic(os.path.join(self.rundir, "pid"), f"{self._proc.pid}\n".encode())

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, VvhostError):
                if self.ready():
                    return
            if not self.alive():
                code = self._proc.returncode if self._proc is not None else "?"
                self.stop(0)
                detail = f"exited with status {code}: {self.log_tail() or '(no output)'}"
                raise EndpointError(tool=self.name, detail=detail)
            if time.monotonic() > deadline:
                if not self.adopted:  # an adopted daemon may still serve others: leave it
                    self.stop(0)
                detail = f"not ready after {timeout:g}s: {self.log_tail() or '(no output)'}"
                raise EndpointError(tool=self.name, detail=detail)
            time.sleep(POLL)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout`` s, SIGKILL; reap; remove the pidfile.

        Without a prior ``start`` this stops the daemon that ``rundir/pid`` names,
        if it runs our argv. (tgtd ignores SIGTERM: stop it with ``timeout=0``.)
        """
        with _locked(self.rundir):
            if self._proc is None and self._pid is None:
                pid = _read_pid(self.rundir)
                if pid is not None and _is_ours(pid, self._cmdline):
                    self._pid, self.adopted = pid, True
            if self._proc is not None:
                if self._proc.poll() is None:
                    self._proc.terminate()
                    try:
                        self._proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        self._proc.kill()
                        self._proc.wait()
                pid = self._proc.pid
            elif self._pid is not None:
                pid = self._pid
                _stop_pid(pid, self._cmdline, timeout)
            else:
                return
            if _read_pid(self.rundir) == pid:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.rundir, "pid"))
            self._proc = self._pid = None
            self.adopted = False


def stop_pidfile(rundir: str, timeout: float = 5.0) -> bool:
    """Stop the daemon recorded in ``rundir`` (by a supervisor that may be gone).

    Signals the PID in ``rundir/pid`` only if it still runs ``rundir/cmdline``;
    removes the pidfile either way. Returns True if a process was stopped.
    """
    with _locked(rundir):
        pid = _read_pid(rundir)
        try:
            with open(os.path.join(rundir, "cmdline"), "rb") as fh:
                cmdline = fh.read()
        except FileNotFoundError:
            cmdline = b""
        stopped = pid is not None and bool(cmdline) and _stop_pid(pid, cmdline, timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(rundir, "pid"))
    return stopped
