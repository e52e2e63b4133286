"""Arrays never overlap, and an array whose filesystem is gone is offline.

Hostile and clumsy scenarios against a real ``vvhost serve`` and the CLI:
two arrays on one directory (trailing slash, symlink, nesting, a bind mount),
an array over the state directory or a file endpoint's directory, someone
else's directory, a move between arrays that are one directory underneath,
and an array whose loop-mounted filesystem is unmounted (and a restart then).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.fsfixtures import LoopFs, loop_capability, make_loop_fs
from tests.integration.arraylab import Plane, running_plane
from tests.patterns import CHUNK, Patterns
from vvhost.arrays.identity import MARKER
from vvhost.model import JournalEntry
from vvhost.service import Config, Service
from vvhost.service.data import finish_move


@pytest.fixture
def plane(tmp_path: str) -> Iterator[Plane]:
    with running_plane(str(tmp_path)) as p:
        yield p


def _names(plane: Plane) -> list[str]:
    return [a["name"] for a in plane.json("array", "list")]


def test_overlapping_arrays_are_refused_both_ways(plane: Plane, tmp_path: str) -> None:
    outer = os.path.join(tmp_path, "outer")
    x = os.path.join(outer, "x")
    plane("array", "add", "a1", "--path", x)
    assert os.path.exists(os.path.join(x, MARKER))
    link = os.path.join(tmp_path, "link")
    os.symlink(x, link)
    bind = os.path.join(tmp_path, "bind")
    os.mkdir(bind)
    subprocess.run(["mount", "--bind", x, bind], check=True)
    try:
        for path, text in [
            (x + "/", "is the same directory as array a1"),
            (link, "is the same directory as array a1"),
            (bind, "is the same directory as array a1"),
            (os.path.join(x, "vvols", "inner"), "lies inside array a1"),
            (os.path.join(link, "sub"), "lies inside array a1"),
            (os.path.join(bind, "sub"), "lies inside array a1"),
            (outer, "contains array a1"),
        ]:
            plane.refused(4, text, "array", "add", "a2", "--path", path)
        assert not os.path.exists(os.path.join(x, "vvols", "inner"))
        assert not os.path.exists(os.path.join(bind, "sub"))
    finally:
        subprocess.run(["umount", bind], check=True)
    assert _names(plane) == ["local", "a1"]


def test_state_dir_and_endpoint_dirs_are_not_arrays(plane: Plane, tmp_path: str) -> None:
    state = plane.state
    for path, text in [
        (state, "same directory as the control plane's state directory"),
        (os.path.join(state, "pe"), "lies inside the control plane's state directory"),
        (os.path.join(state, "arrays"), "lies inside the control plane's state directory"),
        (os.path.join(state, "arrays", "local", "x"), "lies inside array local"),
    ]:
        plane.refused(4, text, "array", "add", "bad", "--path", path)
    nfs = os.path.join(tmp_path, "nfs")
    plane("pe", "create", "file1", "--protocol", "file", "--path", nfs)
    for path, text in [
        (nfs, "same directory as the directory of endpoint file1"),
        (os.path.join(nfs, "in"), "lies inside the directory of endpoint file1"),
    ]:
        plane.refused(4, text, "array", "add", "bad", "--path", path)
    # under STATE/arrays/ is where arrays belong, like the default one
    plane("array", "add", "second", "--path", os.path.join(state, "arrays", "second"))
    assert _names(plane) == ["local", "second"]


def test_someone_elses_directory_is_not_adopted(plane: Plane, tmp_path: str) -> None:
    theirs = os.path.join(tmp_path, "theirs")
    os.mkdir(theirs)
    with open(os.path.join(theirs, "precious.img"), "wb") as f:
        f.write(b"not yours")
    plane.refused(4, "is not empty", "array", "add", "grab", "--path", theirs)
    assert sorted(os.listdir(theirs)) == ["precious.img"]
    # a directory that another control plane made an array of: its marker says so
    with running_plane(os.path.join(tmp_path, "other")) as other:
        foreign = os.path.join(tmp_path, "foreign")
        other("array", "add", "mine", "--path", foreign)
    plane.refused(4, "holds the marker of array mine", "array", "add", "x", "--path", foreign)
    empty = os.path.join(tmp_path, "empty")
    os.mkdir(empty)
    plane("array", "add", "fresh", "--path", empty)
    assert os.path.exists(os.path.join(empty, MARKER))
    plane("array", "delete", "fresh")  # forgetting an empty array takes its marker back
    assert os.listdir(empty) == []
    assert _names(plane) == ["local"]


def test_move_between_arrays_that_share_files_keeps_the_data(
    plane: Plane, patterns: Patterns, tmp_path: str
) -> None:
    """The second array's vvols directory is (by a symlink) the first one's: the copy
    would be the source itself and the cleanup would delete the only copy."""
    a1, a2 = os.path.join(tmp_path, "a1"), os.path.join(tmp_path, "a2")
    plane("array", "add", "a1", "--path", a1)
    plane("array", "add", "a2", "--path", a2)
    os.rmdir(os.path.join(a2, "vvols"))
    os.symlink(os.path.join(a1, "vvols"), os.path.join(a2, "vvols"))
    plane("container", "create", "c1", "--capacity", "1G", "--array", "a1")
    plane("container", "create", "c2", "--capacity", "1G", "--array", "a2")
    plane("vvol", "create", "--container", "c1", "--size", "8M", "--name", "d")
    path = plane.json("vvol", "show", "d")["path"]
    patterns.write(path, "A", [0, 5 * CHUNK])
    plane.refused(4, "overlap", "vvol", "move", "d", "--container", "c2")
    patterns.check(path, "A", [0, 5 * CHUNK])
    shown = plane.json("vvol", "show", "d")
    assert shown["state"] == "ready" and shown["container"] == "c1"
    os.unlink(os.path.join(a2, "vvols"))
    assert "consistent" in plane("audit").stdout


@pytest.fixture
def ext4(tmp_path: str) -> Iterator[LoopFs]:
    reason = loop_capability("ext4")
    if reason:
        pytest.skip(reason)
    fs = make_loop_fs(str(tmp_path), "ext4", "128M")
    with fs:
        yield fs


def test_unmounted_array_is_offline_and_nothing_lands_on_the_mountpoint(
    plane: Plane, ext4: LoopFs, patterns: Patterns
) -> None:
    mnt = ext4.mountpoint
    plane("array", "add", "ext", "--path", mnt)
    plane("container", "create", "pool", "--capacity", "1G", "--array", "ext")
    plane("vvol", "create", "--container", "pool", "--size", "8M", "--name", "d")
    path = plane.json("vvol", "show", "d")["path"]
    patterns.write(path, "A", [0, 7 * CHUNK])
    plane("vvol", "snapshot", "d", "--name", "d@s1")
    plane("host", "add", "h1")
    plane("pe", "create", "file1", "--protocol", "file", "--path", os.path.join(plane.tmp, "nfs"))
    assert plane.array("ext")["state"] == "online"

    ext4.unmount()
    for restart in (False, True):
        if restart:
            plane.restart()  # a start while the array is away: no crash, no recreation
        row = plane.array("ext")
        assert row["state"] == "offline" and "no array marker" in row["reason"], row
        plane.refused(6, "offline", "vvol", "create", "--container", "pool", "--size", "1M")
        plane.refused(6, "offline", "vvol", "snapshot", "d", "--name", "d@s2")
        plane.refused(6, "offline", "vvol", "clone", "d", "--name", "d2")
        plane.refused(6, "offline", "vvol", "extend", "d", "--size", "16M")
        plane.refused(6, "offline", "vvol", "delete", "d@s1")
        plane.refused(6, "offline", "vvol", "bitmap", "d")
        bind = plane("vvol", "bind", "d", "--host", "h1", ok=False)
        assert bind.returncode != 0 and "offline" in bind.stderr, bind.stderr
        assert "Traceback" not in bind.stderr
        shown = plane.json("vvol", "show", "d")
        assert "offline" in shown["problem"]
        audit = plane("audit", ok=False)
        assert audit.returncode == 1 and "array ext is offline" in audit.stdout
        assert "has no data" not in audit.stdout
        assert os.listdir(mnt) == [], "nothing may be created on the empty mountpoint"
        assert plane.json("binding", "list") == []

    ext4.mount()
    assert plane.array("ext")["state"] == "online"
    patterns.check(path, "A", [0, 7 * CHUNK])
    snap = plane.json("vvol", "show", "d@s1")["path"]
    patterns.check(snap, "A", [0, 7 * CHUNK])
    plane("vvol", "snapshot", "d", "--name", "d@s2")
    patterns.check(plane.json("vvol", "show", "d@s2")["path"], "A", [0, 7 * CHUNK])
    assert "consistent" in plane("audit").stdout


def test_another_array_mounted_in_its_place_is_offline(
    plane: Plane, ext4: LoopFs, tmp_path: str
) -> None:
    """A different filesystem (with its own, foreign marker) mounted where the array was."""
    plane("array", "add", "ext", "--path", ext4.mountpoint)
    ext4.unmount()
    with running_plane(os.path.join(tmp_path, "other")) as other:
        other("array", "add", "theirs", "--path", ext4.mountpoint)  # an empty dir now
    row = plane.array("ext")
    assert row["state"] == "offline" and "marker of another array (theirs" in row["reason"]
    plane("container", "create", "pool", "--capacity", "1G", "--array", "ext")
    plane.refused(6, "offline", "vvol", "create", "--container", "pool", "--size", "1M")
    for name in os.listdir(ext4.mountpoint):
        path = os.path.join(ext4.mountpoint, name)
        os.rmdir(path) if os.path.isdir(path) else os.unlink(path)
    ext4.mount()
    assert plane.array("ext")["state"] == "online"


def test_move_cleanup_never_deletes_its_destination(tmp_path: str, patterns: Patterns) -> None:
    """Recovery rolling a committed move forward between arrays that share their
    files (an old catalog, a symlink) must not delete the one copy."""
    svc = Service(Config(state_dir=os.path.join(tmp_path, "state")))
    svc.start()
    try:
        a1 = svc.arrays.add("a1", "dir", {"path": os.path.join(tmp_path, "a1")})
        a2 = svc.arrays.add("a2", "dir", {"path": os.path.join(tmp_path, "a2")})
        os.rmdir(os.path.join(a2.path, "vvols"))
        os.symlink(os.path.join(a1.path, "vvols"), os.path.join(a2.path, "vvols"))
        c1 = svc.containers.create("c1", "1G", ["a1"])
        c2 = svc.containers.create("c2", "1G", ["a2"])
        d = svc.vvols.create("c1", "4M", name="d")
        patterns.write(d["path"], "A", [0, 2 * CHUNK])
        args = {
            "members": [d["id"]],
            "src_array": a1.id,
            "dst_array": a2.id,
            "src_container": c1.id,
            "dst_container": c2.id,
            "total": d["size"],
        }
        entry = JournalEntry(
            id=str(uuid.uuid4()), op="move", vvol=d["id"], step="committed", args=args, created=0
        )
        finish_move(svc.ctx, entry)
        patterns.check(d["path"], "A", [0, 2 * CHUNK])
    finally:
        svc.close()
