"""What a full, broken or racing array does to the control plane: nothing fatal.

Against a real ``vvhost serve`` and the CLI: a snapshot of a vvol a host is
writing (torn on arrays without reflink), copy-diffs into a small ext4
filesystem that fills up (live, after a crash, and across restarts while it is
full), a vvol whose data file vanished, a bitmap across two filesystems, and
what recovery says it did.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.fsfixtures import LoopFs, loop_capability, make_loop_fs
from tests.integration.arraylab import Plane, running_plane
from tests.patterns import CHUNK, Patterns
from vvhost.errors import InvalidInput
from vvhost.faults import FAULT_ENV, FAULT_MARK


@pytest.fixture
def plane(tmp_path: str) -> Iterator[Plane]:
    with running_plane(str(tmp_path)) as p:
        yield p


def _bound_vvol(plane: Plane, patterns: Patterns, container: str) -> str:
    """A vvol with a pattern, bound writable for host h1 through a file endpoint."""
    plane("vvol", "create", "--container", container, "--size", "8M", "--name", "d")
    path = plane.json("vvol", "show", "d")["path"]
    patterns.write(path, "A", [0, 3 * CHUNK])
    plane("host", "add", "h1")
    plane("pe", "create", "file1", "--protocol", "file", "--path", os.path.join(plane.tmp, "nfs"))
    plane("vvol", "bind", "d", "--host", "h1", "--pe", "file1")
    return path


def test_copy_snapshot_of_a_vvol_being_written_is_refused(plane: Plane, patterns: Patterns) -> None:
    if plane.array("local")["capabilities"].get("reflink"):
        pytest.skip("the state directory's filesystem has reflink")
    plane("container", "create", "pool", "--capacity", "1G")
    path = _bound_vvol(plane, patterns, "pool")
    plane.refused(4, "bound writable for h1", "vvol", "snapshot", "d", "--name", "d@s1")
    plane.refused(4, "bound writable for h1", "vvol", "clone", "d", "--name", "d2")
    assert [v["name"] for v in plane.json("vvol", "list")] == ["d"]
    assert "consistent" in plane("audit").stdout
    plane("vvol", "unbind", "d", "--host", "h1")
    plane("vvol", "snapshot", "d", "--name", "d@s1")
    patterns.check(plane.json("vvol", "show", "d@s1")["path"], "A", [0, 3 * CHUNK])
    patterns.check(path, "A", [0, 3 * CHUNK])


def test_reflink_snapshot_of_a_bound_vvol_is_allowed(
    plane: Plane, patterns: Patterns, xfs_mount: str
) -> None:
    """FICLONE is atomic: on a reflink array a bound vvol still snapshots; a clone
    that would be a copy onto another (non-reflink) array is refused."""
    plane("array", "add", "x", "--path", tempfile.mkdtemp(dir=xfs_mount))
    try:
        assert plane.array("x")["capabilities"]["reflink"]
        plane("container", "create", "pool", "--capacity", "1G", "--array", "x")
        path = _bound_vvol(plane, patterns, "pool")
        plane("vvol", "snapshot", "d", "--name", "d@s1")
        patterns.check(plane.json("vvol", "show", "d@s1")["path"], "A", [0, 3 * CHUNK])
        if not plane.array("local")["capabilities"].get("reflink"):
            plane("container", "create", "slow", "--capacity", "1G")
            plane.refused(
                4, "bound writable", "vvol", "clone", "d", "--container", "slow", "--name", "c"
            )
        plane("vvol", "unbind", "d", "--host", "h1")
        patterns.check(path, "A", [0, 3 * CHUNK])
        for ref in ("d@s1", "d"):
            plane("vvol", "delete", ref)
    finally:
        plane.stop()


@pytest.fixture
def small_ext4(tmp_path: str) -> Iterator[LoopFs]:
    reason = loop_capability("ext4")
    if reason:
        pytest.skip(reason)
    fs = make_loop_fs(str(tmp_path), "ext4", "32M")
    with fs:
        yield fs


def _fill(directory: str) -> str:
    """Write a file until the filesystem is full; returns its path."""
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as f:
        for block in (1 << 20, 4096):
            try:
                while True:
                    f.write(b"\xee" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    return filler


def _crash_at(plane: Plane, fault: str, *args: str) -> None:
    """Run a command against a control plane that stops at ``fault``; kill -9 it there
    (the caller starts it again)."""
    plane.stop()
    mark = os.path.join(plane.state, FAULT_MARK)
    if os.path.exists(mark):
        os.unlink(mark)
    plane.start(env={FAULT_ENV: fault})
    cmd = subprocess.Popen(
        [sys.executable, "-m", "vvhost", "--socket", plane.socket, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(mark):
            assert cmd.poll() is None and time.monotonic() < deadline, "fault never reached"
            time.sleep(0.05)
    finally:
        plane.kill()
        cmd.wait(60)


B = [k * CHUNK for k in range(4, 60)]  # 3.5 MiB that differ between src@0 and src


def test_full_array_fails_copy_diffs_cleanly_and_survives_restarts(
    plane: Plane, patterns: Patterns, small_ext4: LoopFs
) -> None:
    mnt = small_ext4.mountpoint
    plane("array", "add", "small", "--path", os.path.join(mnt, "array"))
    plane("container", "create", "big", "--capacity", "1G")
    plane("container", "create", "tiny", "--capacity", "1G", "--array", "small")
    plane("vvol", "create", "--container", "big", "--size", "8M", "--name", "src")
    src = plane.json("vvol", "show", "src")["path"]
    patterns.write(src, "A", [0, CHUNK])
    plane("vvol", "snapshot", "src", "--name", "src@0")
    patterns.write(src, "B", B)
    plane("vvol", "create", "--container", "tiny", "--size", "8M", "--name", "dst")
    dst = plane.json("vvol", "show", "dst")["path"]
    filler = _fill(mnt)

    copy = ("vvol", "copy-diffs", "src", "--base", "src@0", "--to", "dst")
    plane.refused(6, "No space left on device", *copy)
    shown = plane.json("vvol", "show", "dst")
    assert shown["state"] == "failed" and "No space left" in shown["failure"], shown
    audit = plane("audit", ok=False)
    assert audit.returncode == 1 and "is failed: copy-diffs stopped" in audit.stdout
    plane.refused(4, "is failed", "vvol", "snapshot", "dst")

    plane.restart()  # a start while the array is full: degraded, not fatal
    row = plane.array("small")
    assert row["state"] == "degraded" and "No space left" in row["reason"], row
    assert plane.json("vvol", "show", "dst")["state"] == "failed"
    plane("vvol", "create", "--container", "big", "--size", "1M", "--name", "elsewhere")

    _crash_at(plane, "copy-diffs:begin", *copy)  # recovery cannot finish it: failed
    plane.start()
    recovered = plane.recovered()
    assert [r["op"] for r in recovered] == ["copy-diffs"]
    assert recovered[0]["action"].startswith("failed: ") and "No space" in recovered[0]["action"]
    shown = plane.json("vvol", "show", "dst")
    assert shown["state"] == "failed" and "No space left" in shown["failure"]

    os.unlink(filler)
    assert plane.array("small")["state"] == "online"
    plane(*copy)  # copying again is the way out
    shown = plane.json("vvol", "show", "dst")
    assert shown["state"] == "ready" and shown["failure"] is None
    patterns.check(dst, "B", B)
    patterns.check(src, "B", B)
    assert "consistent" in plane("audit").stdout


def test_unmounted_array_defers_recovery_until_it_is_back(
    plane: Plane, patterns: Patterns, small_ext4: LoopFs, tmp_path: str
) -> None:
    """A crash mid copy-diffs, then a restart while the array is unmounted: the
    daemon starts, the operation waits; mounted back, the next start finishes it."""
    mnt = small_ext4.mountpoint
    plane("array", "add", "small", "--path", mnt)
    plane("container", "create", "big", "--capacity", "1G")
    plane("container", "create", "tiny", "--capacity", "1G", "--array", "small")
    plane("vvol", "create", "--container", "big", "--size", "8M", "--name", "src")
    src = plane.json("vvol", "show", "src")["path"]
    plane("vvol", "snapshot", "src", "--name", "src@0")
    patterns.write(src, "B", B[:8])
    plane("vvol", "create", "--container", "tiny", "--size", "8M", "--name", "dst")
    dst = plane.json("vvol", "show", "dst")["path"]
    copy = ("vvol", "copy-diffs", "src", "--base", "src@0", "--to", "dst")
    _crash_at(plane, "copy-diffs:begin", *copy)
    small_ext4.unmount()
    try:
        plane.start()
        recovered = plane.recovered()
        assert recovered[0]["action"].startswith("deferred: "), recovered
        assert plane.array("small")["state"] == "offline"
        assert os.listdir(mnt) == []
    finally:
        plane.stop()
        small_ext4.mount()
    plane.start()
    assert plane.recovered()[0]["action"] == "rolled forward"
    assert plane.json("vvol", "show", "dst")["state"] == "ready"
    patterns.check(dst, "B", B[:8])


def test_vanished_data_file_is_one_clear_line(plane: Plane, patterns: Patterns) -> None:
    plane("container", "create", "pool", "--capacity", "1G")
    plane("vvol", "create", "--container", "pool", "--size", "8M", "--name", "d")
    path = plane.json("vvol", "show", "d")["path"]
    os.unlink(path)
    shown = plane.json("vvol", "show", "d")
    assert "is missing" in shown["problem"]
    for args in (
        ["vvol", "bitmap", "d"],
        ["vvol", "snapshot", "d"],
        ["vvol", "clone", "d"],
        ["vvol", "extend", "d", "--size", "16M"],
    ):
        plane.refused(6, "is missing", *args)
    plane("host", "add", "h1")
    plane("pe", "create", "file1", "--protocol", "file", "--path", os.path.join(plane.tmp, "nfs"))
    bind = plane("vvol", "bind", "d", "--host", "h1", ok=False)
    assert bind.returncode != 0 and "is missing" in bind.stderr and "Traceback" not in bind.stderr
    assert plane.json("binding", "list") == []
    audit = plane("audit", ok=False)
    assert audit.returncode == 1 and "has no data" in audit.stdout
    assert [v["name"] for v in plane.json("vvol", "list")] == ["d"]
    plane("vvol", "delete", "d")
    assert "consistent" in plane("audit").stdout


def test_bitmap_across_filesystems_is_bad_input(plane: Plane, xfs_mount: str) -> None:
    plane("array", "add", "x", "--path", tempfile.mkdtemp(dir=xfs_mount))
    try:
        plane("container", "create", "here", "--capacity", "1G")
        plane("container", "create", "there", "--capacity", "1G", "--array", "x")
        plane("vvol", "create", "--container", "here", "--size", "1M", "--name", "a")
        plane("vvol", "create", "--container", "there", "--size", "1M", "--name", "b")
        assert plane.server is not None
        client = plane.server.client()
        try:
            with pytest.raises(InvalidInput, match="same filesystem"):
                client.vvol_bitmap("a", base="b", method="fiemap")
            assert client.vvol_bitmap("a", base="b")["method"] == "compare"
        finally:
            client.close()
        for ref in ("a", "b"):
            plane("vvol", "delete", ref)
    finally:
        plane.stop()


def test_recovery_says_rolled_back_when_it_rolled_back(plane: Plane, patterns: Patterns) -> None:
    plane("container", "create", "pool", "--capacity", "1G")
    plane("vvol", "create", "--container", "pool", "--size", "8M", "--name", "d")
    patterns.write(plane.json("vvol", "show", "d")["path"], "A", [0])
    _crash_at(plane, "snapshot:copied", "vvol", "snapshot", "d", "--name", "d@s1")
    plane.start()
    recovered = plane.recovered()
    assert [(r["op"], r["action"]) for r in recovered] == [("snapshot", "rolled back")]
    assert [v["name"] for v in plane.json("vvol", "list")] == ["d"]
    assert "consistent" in plane("audit").stdout
