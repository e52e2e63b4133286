"""kill -9 of ``vvhost serve`` in the middle of multi-step operations.

The daemon is told (VVHOST_FAULT_AT=op:step) to stop at a named journal step;
once it says it is there, it is killed with SIGKILL.  The next start must
finish the operation forward or back, leaving data at one consistent point and
nothing orphaned (``audit``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.patterns import CHUNK, Patterns
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.faults import FAULT_ENV, FAULT_MARK

MiB = 1 << 20


@dataclass
class Crashable:
    state: str
    socket: str

    def server(self, fault: str | None = None) -> ServerProcess:
        env = {FAULT_ENV: fault} if fault else {FAULT_ENV: ""}
        return ServerProcess(self.state, self.socket, env=env).start()

    def crash_during(self, fault: str, *cli_args: str) -> None:
        """Run ``vvhost CLI_ARGS`` against a daemon that stops at ``fault``; kill -9 it there."""
        mark = os.path.join(self.state, FAULT_MARK)
        if os.path.exists(mark):
            os.unlink(mark)
        server = self.server(fault)
        cmd = subprocess.Popen(
            [sys.executable, "-m", "vvhost", "--socket", self.socket, *cli_args],
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


@pytest.fixture
def crash(fs_dir: str) -> Iterator[Crashable]:
    yield Crashable(os.path.join(fs_dir, "state"), os.path.join(fs_dir, "c.sock"))


def _recovered(c: Crashable, check: Callable[[Client], None]) -> None:
    server = c.server()
    client = server.client()
    try:
        assert client.health()["recovered"], "the restart recovered nothing"
        report = client.audit()
        assert report["ok"], report["problems"]
        check(client)
    finally:
        client.close()
        server.stop()


def _setup(c: Crashable, patterns: Patterns) -> dict[str, str]:
    server = c.server()
    client = server.client()
    try:
        client.container_create("pool", "1G")
        v = client.vvol_create("pool", "32M", name="d")
        patterns.write(v["path"], "A", [0, 5 * CHUNK])
        s1 = client.vvol_snapshot("d", name="d@s1")
        patterns.write(v["path"], "B", [5 * CHUNK, 9 * CHUNK])
        return {
            "d": v["id"],
            "path": v["path"],
            "s1": s1["id"],
            "sha_a": patterns.sha(s1["path"]),
            "sha_b": patterns.sha(v["path"]),
        }
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("fault", ["snapshot:copied", "clone:copied", "create:file-created"])
def test_new_vvol_rolled_back(crash: Crashable, patterns: Patterns, fault: str) -> None:
    ids = _setup(crash, patterns)
    args = {
        "snapshot:copied": ["vvol", "snapshot", "d"],
        "clone:copied": ["vvol", "clone", "d@s1", "--linked"],
        "create:file-created": ["vvol", "create", "--container", "pool", "--size", "8M"],
    }[fault]
    crash.crash_during(fault, *args)

    def check(client: Client) -> None:
        assert sorted(v["id"] for v in client.vvols()) == sorted([ids["d"], ids["s1"]])
        assert client.vvol("d")["refs"] == 1 and client.vvol("d@s1")["refs"] == 0
        assert client.container("pool")["provisioned"] == 64 * MiB
        assert patterns.sha(ids["path"]) == ids["sha_b"]

    _recovered(crash, check)


@pytest.mark.parametrize(
    "fault,expect",
    [
        ("revert:safety-ready", "sha_b"),  # before the commit point: rolled back
        ("revert:replaced", "sha_b"),  # swapped but not recorded: rolled back from the safety copy
        ("revert:committed", "sha_a"),  # after the commit point: rolled forward
    ],
)
def test_revert_recovers_to_one_point(
    crash: Crashable, patterns: Patterns, fault: str, expect: str
) -> None:
    ids = _setup(crash, patterns)
    crash.crash_during(fault, "vvol", "revert", "d", "--to", "d@s1")

    def check(client: Client) -> None:
        d = client.vvol("d")
        assert d["state"] == "ready" and d["snapshots"] == [ids["s1"]]  # safety snapshot gone
        assert patterns.sha(ids["path"]) == ids[expect]
        client.vvol_revert("d", "d@s1")  # and it still works
        assert patterns.sha(ids["path"]) == ids["sha_a"]

    _recovered(crash, check)


def test_move_rolled_back(crash: Crashable, patterns: Patterns, fs_dir: str) -> None:
    ids = _setup(crash, patterns)
    server = crash.server()
    client = server.client()
    client.array_add("far", "dir", os.path.join(fs_dir, "far"))
    client.container_create("remote", "1G", arrays=["far"])
    client.close()
    server.stop()
    crash.crash_during("move:copied", "vvol", "move", "d", "--container", "remote")

    def check(client: Client) -> None:
        d = client.vvol("d")
        assert d["container"] == "pool" and d["path"] == ids["path"]
        assert patterns.sha(ids["path"]) == ids["sha_b"]
        assert client.container("remote")["provisioned"] == 0
        assert os.listdir(os.path.join(fs_dir, "far", "vvols")) == []

    _recovered(crash, check)


def test_delete_rolled_forward(crash: Crashable, patterns: Patterns) -> None:
    _setup(crash, patterns)
    crash.crash_during("delete:file-removed", "vvol", "delete", "d@s1")

    def check(client: Client) -> None:
        assert [v["name"] for v in client.vvols()] == ["d"]
        assert client.vvol("d")["refs"] == 0

    _recovered(crash, check)
