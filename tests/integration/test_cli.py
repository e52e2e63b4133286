"""The ``vvhost`` command against a real ``vvhost serve``: output, one-line
errors with stable exit codes, and nothing half-done after bad input."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.listing import without_figures
from tests.patterns import CHUNK, Patterns
from vvhost.daemon import ServerProcess
from vvhost.loopfs import LoopFs, loop_capability, release


class Cli:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "vvhost", "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if ok:
            assert out.returncode == 0, out.stderr
        return out

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(tmp_path: str) -> Iterator[Cli]:
    server = ServerProcess(
        os.path.join(tmp_path, "state"), os.path.join(tmp_path, "s.sock")
    ).start()
    try:
        yield Cli(server.socket)
    finally:
        server.stop()


def test_tour_through_the_cli(cli: Cli, patterns: Patterns, tmp_path: str) -> None:
    cli("container", "create", "pool", "--capacity", "1G")
    vid = cli(
        "vvol", "create", "--container", "pool", "--size", "16M", "--name", "d"
    ).stdout.strip()
    assert len(vid) == 36 and "\n" not in vid
    shown = cli.json("vvol", "show", "d")
    assert isinstance(shown, dict) and shown["id"] == vid
    patterns.write(shown["path"], "A", [0, 3 * CHUNK])
    s1 = cli("vvol", "snapshot", "d", "--name", "d@s1").stdout.strip()
    patterns.write(shown["path"], "B", [3 * CHUNK])
    bitmap = cli.json("vvol", "bitmap", "d", "--base", s1)
    assert isinstance(bitmap, dict) and bitmap["ranges"] == [[3 * CHUNK, CHUNK]]
    cli("vvol", "revert", "d", "--to", "d@s1")
    patterns.check(shown["path"], "A", [0, 3 * CHUNK])
    clone = cli("vvol", "clone", "d@s1", "--linked").stdout.strip()
    cli("vvol", "meta", "d", "owner=alice")
    grown = cli.json("vvol", "extend", "d", "--size", "32M")
    assert isinstance(grown, dict) and grown["size"] == 32 << 20
    listing = cli.json("vvol", "list", "--container", "pool")
    assert isinstance(listing, list) and {v["id"] for v in listing} == {vid, s1, clone}
    human = cli("vvol", "list").stdout
    assert "d@s1" in human and "snapshot" in human
    cli("array", "add", "second", "--path", os.path.join(tmp_path, "second"))
    cli("container", "create", "far", "--capacity", "1G", "--array", "second")
    cli("vvol", "delete", clone)
    moved = cli.json("vvol", "move", "d", "--container", "far")
    assert isinstance(moved, dict) and moved["array"] == "second"
    patterns.check(moved["path"], "A", [0, 3 * CHUNK])
    for cmd in (
        ["array", "list"],
        ["array", "show", "second"],
        ["container", "list"],
        ["container", "show", "far"],
        ["audit"],
    ):
        assert cli.json(*cmd) is not None
    assert "consistent" in cli("audit").stdout


BAD = [
    (["vvol", "create", "--container", "pool", "--size", "1000"], 2, "multiple of"),
    (["vvol", "create", "--container", "pool", "--size", "lots"], 2, "not a size"),
    (["vvol", "create", "--container", "nope", "--size", "1M"], 3, "'nope' not found"),
    (["vvol", "create", "--container", "pool", "--size", "10G"], 5, "bytes free"),
    (["vvol", "create", "--container", "pool", "--size", "1M", "--type", "bogus"], 2, "bogus"),
    (["vvol", "create", "--container", "pool"], 2, "--size"),
    (["vvol", "show", "nope"], 3, "not found"),
    (["vvol", "delete", "base"], 4, "snapshots"),
    (["vvol", "extend", "base@s1", "--size", "64M"], 4, "read-only"),
    (["vvol", "extend", "base", "--size", "1M"], 2, "shrinking"),
    (["vvol", "revert", "base", "--to", "other"], 2, "not a snapshot"),
    (["vvol", "meta", "base", "novalue"], 2, "KEY=VALUE"),
    (["vvol", "bitmap", "base", "--chunk", "5000"], 2, "multiple of"),
    (["vvol", "copy-diffs", "base", "--base", "base", "--to", "other"], 2, "different"),
    (["vvol", "clone", "base", "--linked", "--container", "nope"], 3, "not found"),
    (["container", "create", "../evil", "--capacity", "1G"], 2, "invalid"),
    (["container", "create", "pool", "--capacity", "1G"], 4, "already exists"),
    (["container", "delete", "pool"], 4, "vvols"),
    (["array", "add", "x", "--backend", "tape", "--path", "/tmp/x"], 2, "unknown backend"),
    (["array", "delete", "local"], 4, "in use"),
    (["nosuchcommand"], 2, "No such command"),
]


@pytest.mark.parametrize("args,code,text", BAD, ids=[" ".join(b[0][:3]) for b in BAD])
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: str, args: list[str], code: int, text: str
) -> None:
    """Only the bad command goes through the CLI; the scene is set and checked
    through the API (a command line costs a Python start)."""
    server = ServerProcess(os.path.join(tmp_path, "state"), os.path.join(tmp_path, "s.sock"))
    api = server.start().client()
    try:
        api.container_create("pool", "1G")
        api.vvol_create("pool", "32M", name="base")
        api.vvol_create("pool", "32M", name="other")
        api.vvol_snapshot("base", name="base@s1")
        before = without_figures(api.vvols())
        out = Cli(server.socket)(*args, ok=False)
        assert out.returncode == code, out.stderr
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("vvhost: error: "), out.stderr
        assert text in out.stderr and "Traceback" not in out.stderr
        assert without_figures(api.vvols()) == before
        report = api.audit()
        assert report["ok"], report
    finally:
        api.close()
        server.stop()


def test_unreachable_control_plane(tmp_path: str) -> None:
    out = Cli(os.path.join(tmp_path, "nobody.sock"))("vvol", "list", ok=False)
    assert out.returncode == 7
    assert out.stderr.startswith("vvhost: error: cannot reach the control plane")
    assert out.stderr.count("\n") == 1


def _loops_of(state: str) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if state in line]


def _mounts_of(state: str) -> list[str]:
    with open("/proc/self/mounts") as fh:
        return [line for line in fh if state in line]


def test_quickstart_runs_clean(short_tmp: str) -> None:
    state = os.path.join(short_tmp, "qs")
    out = subprocess.run(
        [sys.executable, "-m", "vvhost", "quickstart", "--state-dir", state],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    assert "VVTEST verify vda A 1 8 ok" in text and "iscsi://" in text
    assert "VVTEST verify vda Z 1 8 ok" in text and "└── before" in text
    assert "consistent" in text and "FAILED" not in text
    if loop_capability("xfs") is None:
        # the array on a loop-mounted XFS: array COW snapshots, not qcow2 layers
        assert "snapshot mode: COW" in text and "snapshot mode: redo" not in text
        stun = re.search(r"^stun time: (\d+(?:\.\d+)?) ms$", text, re.M)
        assert stun and 0 < float(stun.group(1)) < 5000, text
        assert re.search(r"^mode\s+cow$", text, re.M), text
        assert "$ vvhost vm clone demo demo-clone --snapshot before --linked" in text
        assert re.search(r"^reverted in \d+ ms$", text, re.M)
        # boots: first write, the running snapshot, Z, the clone, after the revert
        assert text.count("ok: every command the guest ran on its vvols succeeded") == 5
        assert "Unmounted the XFS image and detached its loop device." in text
    else:
        assert "snapshot mode: redo" in text
        assert text.count("ok: every command the guest ran on its vvols succeeded") == 3
    # the guest verifies its pattern after the revert (the last boot's report)
    after_revert = text.rsplit("$ vvhost vm revert demo before", 1)[1]
    assert "VVTEST verify vda A 1 8 ok" in after_revert
    assert "VVTEST verify vdb B 4 4 ok" in after_revert
    assert "VVTEST verify vda Z" not in after_revert
    assert _loops_of(state) == [] and _mounts_of(state) == []
    done = subprocess.run(
        [sys.executable, "-m", "vvhost", "quickstart", "--state-dir", state, "--cleanup"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and not os.path.exists(state)


def test_quickstart_cleanup_unmounts_what_a_killed_run_left(short_tmp: str) -> None:
    """A quickstart killed -9 with its XFS mounted: --cleanup unmounts and detaches."""
    if loop_capability("xfs"):
        pytest.skip(f"no XFS loop mount here: {loop_capability('xfs')}")
    state = os.path.join(short_tmp, "qs")
    mnt = LoopFs(state, "xfs", "512M").__enter__()  # what the killed run left mounted
    try:
        assert _mounts_of(state) and _loops_of(state)
        done = subprocess.run(
            [sys.executable, "-m", "vvhost", "quickstart", "--state-dir", state, "--cleanup"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"unmounted {mnt}" in done.stdout
        assert _mounts_of(state) == [] and _loops_of(state) == [] and not os.path.exists(state)
    finally:
        release(state)


def test_quickstart_interrupted_leaves_nothing_mounted(short_tmp: str) -> None:
    """Ctrl-C in the middle of the tour: the host, the control plane and its endpoint
    daemons stop, the XFS image is unmounted and its loop device detached."""
    if loop_capability("xfs"):
        pytest.skip(f"no XFS loop mount here: {loop_capability('xfs')}")
    state = os.path.join(short_tmp, "qs")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vvhost", "quickstart", "--state-dir", state],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # as in a terminal: a test run started in the background ignores SIGINT, and
        # its children would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("$ vvhost pe create"):  # mounted, serving, an endpoint next
                break
        assert _mounts_of(state) and _loops_of(state), "".join(seen)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "Traceback" not in rest, rest
    assert "Unmounted the XFS image and detached its loop device." in rest, rest
    assert _mounts_of(state) == [] and _loops_of(state) == []
    pids = glob.glob(os.path.join(state, "control", "pe", "*", "pid"))
    assert pids == []  # every endpoint daemon stopped (and its pidfile removed)
    done = subprocess.run(
        [sys.executable, "-m", "vvhost", "quickstart", "--state-dir", state, "--cleanup"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and not os.path.exists(state)
