"""A real ``vvhost serve`` driven through the CLI, restartable, for the array tests.

TMP/
  state/          the control plane's state dir (default array: state/arrays/local)
  s.sock          its socket
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.integration.test_cli import Cli
from vvhost.daemon import ServerProcess


class Plane:
    def __init__(self, tmp: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.state = os.path.join(tmp, "state")
        self.socket = os.path.join(tmp, "s.sock")
        self.env = env
        self.server: ServerProcess | None = None
        self.cli = Cli(self.socket)

    def start(self, env: dict[str, str] | None = None) -> Plane:
        self.server = ServerProcess(self.state, self.socket, env=env or self.env).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def kill(self) -> None:
        """SIGKILL the control plane (a crash), then stop the daemons it had started."""
        if self.server is not None:
            self.server.kill()
            self.server.stop_endpoint_daemons()
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli(*args, ok=ok)

    def json(self, *args: str) -> Any:
        return self.cli.json(*args)

    def refused(self, code: int, text: str, *args: str) -> str:
        """Run a command that must fail with one line on stderr and exit ``code``."""
        out = self.cli(*args, ok=False)
        assert out.returncode == code, (out.returncode, out.stderr)
        assert out.stderr.startswith("vvhost: error: ") and out.stderr.count("\n") == 1, out.stderr
        assert "Traceback" not in out.stderr
        assert text in out.stderr, out.stderr
        return out.stderr

    def recovered(self) -> list[dict[str, str]]:
        """What the running control plane's recovery did at its start."""
        assert self.server is not None
        client = self.server.client()
        try:
            return list(client.health()["recovered"])
        finally:
            client.close()

    def array(self, name: str) -> dict[str, Any]:
        rows = self.json("array", "list")
        return next(a for a in rows if a["name"] == name)


@contextmanager
def running_plane(tmp: str) -> Iterator[Plane]:
    plane = Plane(tmp).start()
    try:
        yield plane
    finally:
        plane.stop()
