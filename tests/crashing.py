"""Kill -9 a control plane at a fault point, in the middle of a CLI command."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable

from vvhost.daemon import ServerProcess
from vvhost.faults import FAULT_MARK


def crash_during(
    start: Callable[[str], ServerProcess], state: str, socket: str, fault: str, *cli_args: str
) -> None:
    """Run ``vvhost CLI_ARGS`` against a daemon ``start(fault)`` made, which stops at
    ``fault``; kill -9 it there.  The client sees the control plane go, in one line."""
    mark = os.path.join(state, FAULT_MARK)
    if os.path.exists(mark):
        os.unlink(mark)
    server = start(fault)
    cmd = subprocess.Popen(
        [sys.executable, "-m", "vvhost", "--socket", socket, *cli_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(mark):
            assert cmd.poll() is None, cmd.communicate()
            assert time.monotonic() < deadline, "fault point never reached"
            time.sleep(0.05)
        server.kill()
        _out, err = cmd.communicate(timeout=30)
        assert cmd.returncode == 7, err  # the client saw the control plane go away
        assert err.count(b"\n") == 1 and err.startswith(b"vvhost: error: ")
    finally:
        server.kill()
        if cmd.poll() is None:
            cmd.kill()
            cmd.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mark)
