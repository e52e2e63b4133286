"""Start and stop a ``vvhost serve`` child process (quickstart, tests, benchmarks)."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

from .client import Client
from .errors import Unreachable
from .pe.proc import stop_pidfile


class ServerProcess:
    def __init__(
        self,
        state_dir: str,
        socket_path: str | None = None,
        env: Mapping[str, str] | None = None,
        log_path: str | None = None,
        private_tgtd: bool = False,
        args: list[str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.private_tgtd = private_tgtd
        self.args = list(args or [])
        self.socket = socket_path or os.path.join(state_dir, "vvhost.sock")
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or os.path.join(state_dir, "serve.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        os.makedirs(self.state_dir, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "vvhost",
            "--socket",
            self.socket,
            "serve",
            "--state-dir",
            self.state_dir,
            *self.args,
        ]
        if self.private_tgtd:
            argv = self.in_private_mounts(argv)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=self.env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        self.wait_ready(timeout)
        return self

    def in_private_mounts(self, argv: list[str]) -> list[str]:
        """Run in a private mount namespace where /run/tgtd (tgtd's fixed control socket
        directory) is a directory of this state dir, so its tgtd instances stay private."""
        private = os.path.join(self.state_dir, "run-tgtd")
        os.makedirs(private, exist_ok=True)
        os.makedirs("/run/tgtd", exist_ok=True)
        script = 'mount --bind "$0" /run/tgtd && exec "$@"'
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            private,
            *argv,
        ]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise Unreachable(
                    address=self.socket,
                    detail=f"vvhost serve exited with "
                    f"{self.proc.returncode}: {self.log_tail(1).strip()}",
                )
            if os.path.exists(self.socket):
                client = Client.unix(self.socket)
                try:
                    client.health()
                    return
                except Unreachable:
                    pass
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise Unreachable(
                    address=self.socket,
                    detail=f"not ready after {timeout}s: {self.log_tail(1).strip()}",
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def client(self) -> Client:
        return Client.unix(self.socket)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def signal(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` (as a service manager or Ctrl-C would) and return the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the control plane, then any endpoint daemon it left behind (after a
        crash, or with --keep-endpoints), by the PIDs recorded in the state dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stop_endpoint_daemons()

    def endpoint_rundirs(self) -> list[str]:
        pe = os.path.join(self.state_dir, "pe")
        # TCP NBD endpoints run one daemon per host under hosts/<host>; iSCSI
        # endpoints serving RBD a qemu-storage-daemon under qsd/
        per_host = glob.glob(os.path.join(pe, "*", "hosts", "*"))
        helpers = glob.glob(os.path.join(pe, "*", "qsd"))
        return sorted(glob.glob(os.path.join(pe, "*")) + per_host + helpers)

    def stop_endpoint_daemons(self) -> None:
        for rundir in self.endpoint_rundirs():
            stop_pidfile(rundir)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for lab daemons)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
