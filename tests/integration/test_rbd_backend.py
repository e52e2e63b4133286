"""The ``rbd`` array backend against a real private Ceph cluster (tests/cephfixtures.py).

Every test writes known patterns (tests/patterns.py) through the backend and
reads them back after the verb under test; structure is checked in the pool
itself with the librbd bindings (parents, namespaces, trash).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import rbd

from tests.patterns import CHUNK, chunk_bytes
from vvhost.arrays import rbdaudit
from vvhost.arrays.rbdarray import RbdArray
from vvhost.arrays.rbdflatten import MAX_CLONE_DEPTH
from vvhost.arrays.settings import RbdSettings
from vvhost.errors import ArrayOffline, BackendError, DataMissing, InUse, InvalidInput, ReadOnly

MiB = 1 << 20
SIZE = 64 * MiB
OBJ = 4 * MiB


def put(arr: RbdArray, vvol: str, label: str, offsets: list[int]) -> None:
    with arr.open(vvol, writable=True) as vol:
        for off in offsets:
            vol.write(off, chunk_bytes(label, off))
        vol.flush()


def check(arr: RbdArray, vvol: str, label: str, offsets: list[int]) -> None:
    with arr.open(vvol) as vol:
        for off in offsets:
            assert vol.read(off, CHUNK) == chunk_bytes(label, off), f"{vvol}@{off} is not {label}"


def zeros(arr: RbdArray, vvol: str, offsets: list[int]) -> None:
    with arr.open(vvol) as vol:
        for off in offsets:
            assert vol.read(off, CHUNK) == bytes(CHUNK), f"{vvol}@{off} is not zero"


def image_spec(io: Any, ns: str, image_id: str) -> dict[str, Any] | None:
    io.set_namespace(ns)
    with rbd.Image(io, image_id=image_id, read_only=True) as img:
        try:
            return dict(img.get_parent_image_spec())
        except rbd.ImageNotFound:
            return None


def names(io: Any, ns: str) -> list[str]:
    io.set_namespace(ns)
    return sorted(str(i["name"]) for i in rbd.RBD().list2(io))


def trash(io: Any, ns: str) -> list[str]:
    io.set_namespace(ns)
    return sorted(str(t["name"]) for t in rbd.RBD().trash_list(io))


class MemVolume:
    """A VolumeIO held in memory: the 'other array' of copy_in."""

    def __init__(self, size: int, chunks: dict[int, bytes]) -> None:
        self.size = size
        self.chunks = dict(chunks)

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        for off, data in self.chunks.items():
            lo, hi = max(off, offset), min(off + len(data), offset + length)
            if hi > lo:
                out[lo - offset : hi - offset] = data[lo - off : hi - off]
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        self.chunks[offset] = data

    def zero(self, offset: int, length: int) -> None:
        self.chunks[offset] = bytes(length)

    def extents(self) -> Iterator[tuple[int, int]]:
        for off in sorted(self.chunks):
            yield off, len(self.chunks[off])

    def flush(self) -> None:
        pass


def test_create_write_read_and_describe(array: RbdArray, pool_io: Any) -> None:
    array.create("v1", SIZE, "c1")
    array.create("v1", SIZE, "c1")  # idempotent
    put(array, "v1", "one", [0, 8 * MiB])
    check(array, "v1", "one", [0, 8 * MiB])
    zeros(array, "v1", [MiB, 40 * MiB])
    assert array.exists("v1") and not array.exists("nope")
    assert array.list_ids() == ["v1"] and array.partials() == []
    loc = array.locator("v1")
    assert loc["namespace"] == "c1" and loc["image"] == "vv-v1" and loc["image_id"]
    src = array.source("v1")
    assert (src.pool, src.namespace, src.image, src.snap) == (
        array.settings.pool,
        "c1",
        "vv-v1",
        None,
    )
    assert array.probe()["instant"] and array.probe()["namespaces"]
    assert array.free_bytes() > 0
    pool_io.set_namespace("c1")
    with rbd.Image(pool_io, "vv-v1", read_only=True) as img:
        feats = img.features()
        assert img.id() == loc["image_id"]
    for feat in ("LAYERING", "EXCLUSIVE_LOCK", "OBJECT_MAP", "FAST_DIFF", "DEEP_FLATTEN"):
        assert feats & getattr(rbd, f"RBD_FEATURE_{feat}"), feat
    space = array.space("v1")  # figures count the whole objects written (two chunks, two objects)
    assert space.provisioned == SIZE and space.allocated == 2 * OBJ and space.unique == 2 * OBJ
    array.resize("v1", 2 * SIZE)
    with array.open("v1") as vol:
        assert vol.size == 2 * SIZE
        assert list(vol.extents()) == [(0, CHUNK), (8 * MiB, CHUNK)]
        vol_zero_check = vol.read(0, CHUNK)
    assert vol_zero_check == chunk_bytes("one", 0)
    with array.open("v1", writable=True) as vol:
        vol.zero(0, CHUNK)  # less than an object: must still read as zeros
    zeros(array, "v1", [0])


def test_snapshot_keeps_its_point_and_is_read_only(array: RbdArray) -> None:
    array.create("v1", SIZE, "c1")
    put(array, "v1", "old", [0, 8 * MiB])
    assert array.snapshot("v1", "s1") == "rbd-snap"
    put(array, "v1", "new", [0, 8 * MiB])
    check(array, "s1", "old", [0, 8 * MiB])
    check(array, "v1", "new", [0, 8 * MiB])
    assert array.source("s1").snap == "vs-s1" and array.source("s1").image == "vv-v1"
    with pytest.raises(ReadOnly):
        array.open("s1", writable=True).__enter__()
    # group snapshot: prepare (guest running), cut (paused), commit
    array.prepare_snapshot("v1", "s2")
    assert "s2" in array.partials()
    array.cut_snapshot("v1", "s2")
    put(array, "v1", "newer", [0])
    array.commit_snapshot("s2")
    check(array, "s2", "new", [0, 8 * MiB])
    assert sorted(array.list_ids()) == ["s1", "s2", "v1"]
    array.prepare_snapshot("v1", "s3")
    with pytest.raises(InvalidInput):
        array.commit_snapshot("s3")  # never cut: nothing to commit
    array.cut_snapshot("v1", "s3")
    array.abort_snapshot("s3")
    array.abort_snapshot("s3")
    assert "s3" not in array.list_ids() + array.partials()
    space = array.space("s1")
    # s1's chunks were overwritten after it: both (their objects) are only s1's
    assert space.unique == 2 * OBJ and space.provisioned == SIZE


def watch_count(pool_io: Any, ns: str, image: str) -> int:
    pool_io.set_namespace(ns)
    with rbd.Image(pool_io, image, read_only=True) as img:
        return len(list(img.watchers_list()))


def test_group_cut_takes_every_image_at_once_or_none(array: RbdArray, pool_io: Any) -> None:
    """``cut_snapshots``: the images are opened at prepare and closed at commit or
    removal; a name that exists already fails the cut (never adopted), and what the
    others made goes with the abort."""
    for v in ("v1", "v2", "v3"):
        array.create(v, SIZE, "c1")
        put(array, v, f"{v}-old", [0, 8 * MiB])
    for v in ("v1", "v2", "v3"):
        array.prepare_snapshot(v, f"g-{v}")
    assert watch_count(pool_io, "c1", "vv-v1") == 1  # held open for the cut
    array.cut_snapshots([(v, f"g-{v}") for v in ("v1", "v2", "v3")])
    for v in ("v1", "v2", "v3"):
        put(array, v, f"{v}-new", [0])
        array.commit_snapshot(f"g-{v}")
        check(array, f"g-{v}", f"{v}-old", [0, 8 * MiB])
        check(array, v, f"{v}-new", [0])
        assert watch_count(pool_io, "c1", f"vv-{v}") == 0  # closed again
    # a snapshot of that name on v2 already: the cut fails, the group is dropped
    array.prepare_snapshot("v1", "h1")
    array.prepare_snapshot("v2", "h2")
    pool_io.set_namespace("c1")
    with rbd.Image(pool_io, "vv-v2") as img:
        img.create_snap("vs-h2")
    with pytest.raises(BackendError, match="exists already"):
        array.cut_snapshots([("v1", "h1"), ("v2", "h2")])
    pool_io.set_namespace("c1")
    with rbd.Image(pool_io, "vv-v1", read_only=True) as img:
        assert "vs-h1" in [s["name"] for s in img.list_snaps()]  # the other one was cut
    for sid in ("h1", "h2"):
        array.remove(sid)  # what the service's abort does (vs-* names are the array's)
    for v in ("v1", "v2"):
        pool_io.set_namespace("c1")
        with rbd.Image(pool_io, f"vv-{v}", read_only=True) as img:
            assert sorted(s["name"] for s in img.list_snaps()) == [f"vs-g-{v}"]
        assert watch_count(pool_io, "c1", f"vv-{v}") == 0
    assert sorted(array.list_ids()) == ["g-v1", "g-v2", "g-v3", "v1", "v2", "v3"]
    assert not {"h1", "h2"} & set(array.partials())


def test_clones_linked_share_data_full_copies_it(array: RbdArray, pool_io: Any) -> None:
    array.create("v1", SIZE, "c1")
    put(array, "v1", "base", [0, 12 * MiB])
    array.snapshot("v1", "s1")
    put(array, "v1", "later", [0])
    assert array.clone("s1", "lc", "c2", linked=True) == "rbd-clone"
    check(array, "lc", "base", [0, 12 * MiB])
    spec = image_spec(pool_io, "c2", array.locator("lc")["image_id"])
    assert spec is not None and (spec["pool_namespace"], spec["image_name"]) == ("c1", "vv-v1")
    assert spec["snap_name"] == "vs-s1"  # shares the snapshot's data: nothing copied
    assert array.space("lc").allocated == 0
    # a linked clone of the live vvol: of a cut point made for it and owned by it
    array.clone("v1", "live", "c1", linked=True)
    check(array, "live", "later", [0])
    check(array, "live", "base", [12 * MiB])
    spec = image_spec(pool_io, "c1", array.locator("live")["image_id"])
    assert spec is not None and spec["image_name"] == "vv-v1"
    pool_io.set_namespace("c1")
    with rbd.Image(pool_io, "vv-v1", read_only=True) as img:
        user = [s["name"] for s in img.list_snaps() if s["namespace"] == 0]
    assert user == ["vs-s1", "vc-live"]
    assert array.changed("live", "v1", CHUNK).ranges == []  # exact: diffed from the cut point
    put(array, "live", "own", [4 * MiB])
    assert array.changed("live", "s1", CHUNK).ranges == [(0, CHUNK), (4 * MiB, CHUNK)]
    array.remove("live")
    with rbd.Image(pool_io, "vv-v1", read_only=True) as img:
        user = [s["name"] for s in img.list_snaps() if s["namespace"] == 0]
    assert user == ["vs-s1"]
    # full copy: no parent, with progress
    seen: list[tuple[int, int]] = []
    assert array.clone(
        "s1", "full", "c1", linked=False, progress=lambda d, t: seen.append((d, t))
    ) == ("rbd-copy")
    assert image_spec(pool_io, "c1", array.locator("full")["image_id"]) is None
    assert seen and seen[-1][0] == seen[-1][1]
    check(array, "full", "base", [0, 12 * MiB])
    put(array, "lc", "mine", [0])
    check(array, "s1", "base", [0])
    check(array, "full", "base", [0])


def test_revert_is_a_clone_and_keeps_newer_snapshots(array: RbdArray, pool_io: Any) -> None:
    array.create("v1", SIZE, "c1")
    put(array, "v1", "p1", [0, 20 * MiB])
    array.snapshot("v1", "s1")
    put(array, "v1", "p2", [0, 20 * MiB])
    array.snapshot("v1", "s2")
    put(array, "v1", "p3", [0])
    old_id = array.locator("v1")["image_id"]
    # undo leaves the vvol untouched and drops the staged clone
    array.revert("v1", "s1", "op1")
    assert "vv-v1.r-op1" in names(pool_io, "c1")
    array.revert_undo("v1", "op1")
    array.revert_undo("v1", "op1")
    assert "vv-v1.r-op1" not in names(pool_io, "c1")
    check(array, "v1", "p3", [0])
    started = time.monotonic()
    array.revert("v1", "s1", "op2")
    array.revert_commit("v1", "op2")
    array.revert_commit("v1", "op2")  # idempotent
    assert time.monotonic() - started < 30
    loc = array.locator("v1")
    assert loc["image"] == "vv-v1.r-op2" and loc["image_id"] != old_id
    spec = image_spec(pool_io, "c1", loc["image_id"])
    assert spec is not None and spec["image_name"] == "vv-v1" and spec["snap_name"] == "vs-s1"
    assert array.space("v1").allocated == 0  # nothing copied: the revert is a clone
    check(array, "v1", "p1", [0, 20 * MiB])
    check(array, "s2", "p2", [0, 20 * MiB])  # the newer snapshot survives
    check(array, "s1", "p1", [0, 20 * MiB])
    put(array, "v1", "p4", [0])
    check(array, "s1", "p1", [0])
    # the old image is retired, not gone, while s1 and s2 read it
    assert "vv-v1" in names(pool_io, "c1")
    array.reap()
    check(array, "s2", "p2", [0])
    # revert to the newer snapshot: a second clone, then everything goes cleanly
    array.revert("v1", "s2", "op3")
    array.revert_commit("v1", "op3")
    check(array, "v1", "p2", [0, 20 * MiB])
    for vid in ("s1", "s2", "v1"):
        array.remove(vid)
    array.reap()
    assert names(pool_io, "c1") == [] and trash(pool_io, "c1") == []


def test_changed_ranges_are_exact(array: RbdArray) -> None:
    array.create("v1", SIZE, "c1")
    put(array, "v1", "a", [0, 9 * MiB])
    array.snapshot("v1", "s1")
    put(array, "v1", "b", [9 * MiB, 32 * MiB])
    array.snapshot("v1", "s2")
    put(array, "v1", "c", [60 * MiB])
    got = array.changed("s2", "s1", CHUNK)
    assert got.method == "fast-diff"
    assert got.ranges == [(9 * MiB, CHUNK), (32 * MiB, CHUNK)]
    assert array.changed("s1", "s2", CHUNK).ranges == got.ranges  # either order
    assert array.changed("v1", "s2", CHUNK).ranges == [(60 * MiB, CHUNK)]
    # without a base RBD knows an object's data from the object's start on
    assert array.changed("s1", None, CHUNK).ranges == [(0, CHUNK), (8 * MiB, MiB + CHUNK)]
    # object-sized chunks use whole-object diffs
    assert array.changed("s2", "s1", OBJ).ranges == [(8 * MiB, OBJ), (32 * MiB, OBJ)]
    # across a revert: the reverted vvol is a clone of s1
    array.revert("v1", "s1", "r1")
    array.revert_commit("v1", "r1")
    put(array, "v1", "d", [40 * MiB])
    assert array.changed("v1", "s1", CHUNK).ranges == [(40 * MiB, CHUNK)]
    assert array.changed("v1", "s2", CHUNK).ranges == [
        (9 * MiB, CHUNK),
        (32 * MiB, CHUNK),
        (40 * MiB, CHUNK),
    ]


def test_copy_in_keeps_every_point(array: RbdArray) -> None:
    p1 = MemVolume(SIZE, {0: chunk_bytes("x", 0), 16 * MiB: chunk_bytes("x", 16 * MiB)})
    p2 = MemVolume(SIZE, {**p1.chunks, 16 * MiB: chunk_bytes("y", 16 * MiB)})
    p3 = MemVolume(2 * SIZE, {**p2.chunks, 0: bytes(CHUNK), 100 * MiB: chunk_bytes("z", 100 * MiB)})
    seen: list[tuple[int, int]] = []
    array.copy_in("m", "c3", [("m1", p1), ("m2", p2), ("m", p3)], lambda d, t: seen.append((d, t)))
    assert sorted(array.list_ids()) == ["m", "m1", "m2"] and array.partials() == []
    assert seen[-1][0] == seen[-1][1]
    check(array, "m1", "x", [0, 16 * MiB])
    check(array, "m2", "x", [0])
    check(array, "m2", "y", [16 * MiB])
    zeros(array, "m", [0])
    check(array, "m", "y", [16 * MiB])
    check(array, "m", "z", [100 * MiB])
    assert array.source("m1").image == array.source("m").image  # snapshots of one image
    # only what differs was written between points
    assert array.changed("m2", "m1", CHUNK).ranges == [(16 * MiB, CHUNK)]
    # a repeated copy_in replaces what was there
    array.copy_in("m", "c3", [("m1", p1), ("m", p2)])
    assert sorted(array.list_ids()) == ["m", "m1"]
    check(array, "m", "y", [16 * MiB])
    # a vvol id whose earlier image snapshots still read is never written again
    array.snapshot("m", "keep")
    array.remove("m1")
    array.remove("m")
    with pytest.raises(BackendError):
        array.copy_in("m", "c3", [("m", p1)])
    check(array, "keep", "y", [16 * MiB])
    array.remove("keep")
    array.copy_in("m", "c3", [("m1", p1), ("m", p2)])
    array.resize("m", p3.size)
    assert array.write_ranges(p3, "m", [(100 * MiB, CHUNK)]) == CHUNK
    check(array, "m", "z", [100 * MiB])


def test_remove_refused_while_another_client_has_it_open(array: RbdArray, pool_io: Any) -> None:
    array.create("v1", SIZE, "c1")
    put(array, "v1", "a", [0])
    pool_io.set_namespace("c1")
    holder = rbd.Image(pool_io, "vv-v1")  # a host that has the vvol open
    try:
        watcher = [w["addr"] for w in holder.watchers_list()][0]
        started = time.monotonic()
        with pytest.raises(InUse) as err:
            array.remove("v1")
        assert time.monotonic() - started < 10  # refused at once, not retried
        assert watcher in str(err.value)
        assert array.exists("v1")
        check(array, "v1", "a", [0])
    finally:
        holder.close()
    array.remove("v1")
    assert not array.exists("v1") and "vv-v1" not in names(pool_io, "c1")
    assert array.reap() == ["c1/vv-v1"]
    assert trash(pool_io, "c1") == []


def test_remove_order_never_loses_data_and_reap_purges(array: RbdArray, pool_io: Any) -> None:
    array.create("v1", SIZE, "c1")
    put(array, "v1", "a", [0, 4 * MiB])
    array.snapshot("v1", "s1")
    put(array, "v1", "b", [0])
    array.clone("s1", "cl", "c1", linked=True)
    # base first: its image stays (s1 reads it), retired
    array.remove("v1")
    assert not array.exists("v1")
    array.reap()
    check(array, "s1", "a", [0, 4 * MiB])
    check(array, "cl", "a", [0, 4 * MiB])
    # then the snapshot: the clone still reads it (trash namespace), the image stays retired
    array.remove("s1")
    assert array.reap() == []  # the clone still needs the image
    check(array, "cl", "a", [0, 4 * MiB])
    assert names(pool_io, "c1") == ["vv-cl", "vv-v1"] and trash(pool_io, "c1") == []
    assert rbdaudit.report(array)["images_without_entries"] == []  # retired: recorded
    # the clone last: everything goes
    array.remove("cl")
    gone = array.reap()
    assert sorted(gone) == ["c1/vv-cl", "c1/vv-v1"]
    assert names(pool_io, "c1") == [] and trash(pool_io, "c1") == []
    array.remove("cl")  # missing is fine


def test_spaces_are_namespaces(array: RbdArray, pool_io: Any) -> None:
    array.create("a", SIZE, "tenant-a")
    array.create("b", SIZE, "tenant-b")
    put(array, "a", "A", [0])
    put(array, "b", "B", [0])
    assert names(pool_io, "tenant-a") == ["vv-a"] and names(pool_io, "tenant-b") == ["vv-b"]
    assert names(pool_io, "") == []
    pool_io.set_namespace("tenant-b")
    with pytest.raises(rbd.ImageNotFound):
        rbd.Image(pool_io, "vv-a", read_only=True)
    check(array, "a", "A", [0])
    check(array, "b", "B", [0])


def test_clones_past_the_depth_limit_flatten_in_background(array: RbdArray, pool_io: Any) -> None:
    array.create("g0", SIZE, "c1")
    put(array, "g0", "root", [0, 32 * MiB])
    prev = "g0"
    for gen in range(1, MAX_CLONE_DEPTH + 2):
        vid = f"g{gen}"
        array.clone(prev, vid, "c1", linked=True)
        prev = vid
    last = prev
    status = array.wait_flatten(last, timeout=120)
    assert status is not None and status["state"] == "done" and status["done"] == status["total"]
    assert image_spec(pool_io, "c1", array.locator(last)["image_id"]) is None
    assert array.flatten_status(f"g{MAX_CLONE_DEPTH - 1}") is None  # within the limit: linked
    check(array, last, "root", [0, 32 * MiB])


def test_reap_resumes_flattening_after_a_restart(
    array: RbdArray, pool_io: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    array.create("g0", SIZE, "c1")
    put(array, "g0", "root", [0])
    monkeypatch.setattr(array.flattener, "start", lambda *args: None)  # died before flattening
    for gen in range(1, MAX_CLONE_DEPTH + 2):
        array.clone(f"g{gen - 1}", f"g{gen}", "c1", linked=True)
    monkeypatch.undo()
    last = f"g{MAX_CLONE_DEPTH + 1}"
    assert image_spec(pool_io, "c1", array.locator(last)["image_id"]) is not None
    array.reap()
    status = array.wait_flatten(last, timeout=120)
    assert status is not None and status["state"] == "done"
    assert image_spec(pool_io, "c1", array.locator(last)["image_id"]) is None
    assert array.flatten_status(f"g{MAX_CLONE_DEPTH}") is None  # at the limit: stays linked
    check(array, last, "root", [0])


def test_offline_and_claims(ceph_cluster: Any, ceph_pool: str, tmp_path: Any) -> None:
    settings = RbdSettings(
        pool=ceph_pool, conf=ceph_cluster.conf, keyring=ceph_cluster.admin_keyring
    )
    first = RbdArray("r1", settings, "array-1")
    other = RbdArray("r2", settings, "array-2")
    try:
        first.claim()
        first.claim()  # again: fine
        assert first.offline() is None
        with pytest.raises(InUse) as err:
            other.claim()
        assert "array-1" in str(err.value)
        assert "belongs to array array-1" in (other.offline() or "")
        with pytest.raises(ArrayOffline):
            other.create("x", SIZE, "c1")
    finally:
        first.close()
        other.close()
    missing = RbdArray(
        "r3",
        RbdSettings(
            pool=f"nopool-{uuid.uuid4().hex[:6]}",
            conf=ceph_cluster.conf,
            keyring=ceph_cluster.admin_keyring,
        ),
        "array-3",
    )
    try:
        assert "does not exist" in (missing.offline() or "")
    finally:
        missing.close()
    dead = tmp_path / "dead.conf"
    dead.write_text("[global]\nmon_host = v2:127.0.0.1:9\n")
    unreachable = RbdArray(
        "r4",
        RbdSettings(pool=ceph_pool, conf=str(dead), keyring=ceph_cluster.admin_keyring),
        "array-4",
    )
    try:
        started = time.monotonic()
        reason = unreachable.offline()
        assert reason is not None and "cannot reach" in reason
        assert time.monotonic() - started < 30
    finally:
        unreachable.close()


def test_a_crash_mid_clone_leaves_only_what_recovery_finds(
    array: RbdArray, pool_io: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    array.create("v1", SIZE, "c1")
    put(array, "v1", "a", [0])

    real_clone = array.images.clone

    def crash(*args: Any) -> None:
        real_clone(*args)
        raise RuntimeError("killed")

    # the clone image and its cut point exist, the index does not say so: the process dies
    monkeypatch.setattr(array.images, "clone", crash)
    with pytest.raises(RuntimeError):
        array.clone("v1", "c", "c1", linked=True)
    monkeypatch.undo()
    assert array.partials() == ["c"] and "c" not in array.list_ids()
    pool_io.set_namespace("c1")
    with rbd.Image(pool_io, "vv-v1", read_only=True) as img:
        assert [s["name"] for s in img.list_snaps()] == ["vc-c"]
    array.remove("c")  # what recovery does with a partial
    array.reap()
    assert names(pool_io, "c1") == ["vv-v1"] and trash(pool_io, "c1") == []
    with rbd.Image(pool_io, "vv-v1", read_only=True) as img:
        assert list(img.list_snaps()) == []
    # a revert staged but never committed: undo finds it by the operation id alone
    array.snapshot("v1", "s1")
    array.revert("v1", "s1", "op-9")
    other = RbdArray("r1", array.settings, "array-1")  # a restarted control plane
    try:
        other.revert_undo("v1", "op-9")
    finally:
        other.close()
    assert "vv-v1.r-op-9" not in names(pool_io, "c1")
    check(array, "v1", "a", [0])


def test_many_threads_share_one_array(array: RbdArray) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            vid = f"t{n}"
            array.create(vid, SIZE, f"c{n % 2}")
            put(array, vid, f"w{n}", [0, 4 * MiB])
            array.snapshot(vid, f"{vid}s")
            put(array, vid, f"x{n}", [0])
            array.clone(f"{vid}s", f"{vid}c", f"c{n % 2}", linked=True)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for n in range(4):
        check(array, f"t{n}", f"x{n}", [0])
        check(array, f"t{n}s", f"w{n}", [0, 4 * MiB])
        check(array, f"t{n}c", f"w{n}", [0, 4 * MiB])
    assert len(array.list_ids()) == 12


def test_audit_compares_index_and_pool(
    array: RbdArray, pool_io: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    array.create("v1", SIZE, "c1")
    array.snapshot("v1", "s1")
    clean = rbdaudit.report(array)
    assert all(not found for found in clean.values()), clean
    pool_io.set_namespace("c1")
    rbd.RBD().create(pool_io, "vv-stray", MiB)  # an image nobody recorded
    with rbd.Image(pool_io, "vv-v1") as img:
        img.create_snap("vs-ghost")  # a snapshot nobody recorded
    array.create("v2", SIZE, "c1")
    array.remove("v2")  # in the trash until reaped
    assert rbdaudit.report(array)["trash"] == []  # the reaper has time to purge it
    monkeypatch.setattr(rbdaudit, "TRASH_GRACE", 0.0)
    found = rbdaudit.report(array)
    assert found["images_without_entries"] == ["c1/vv-stray"]
    assert found["stale_snapshots"] == ["c1/vv-v1@vs-ghost"]
    assert found["trash"] == ["c1/vv-v2"]
    assert found["entries_without_data"] == [] and found["partials"] == []
    with rbd.Image(pool_io, "vv-v1") as img:
        img.remove_snap("vs-s1")  # the data of a recorded snapshot vanished
    assert rbdaudit.report(array)["entries_without_data"] == ["s1"]
    rbd.RBD().remove(pool_io, "vv-stray")


def qemu_spec(src: Any) -> str:
    node = {"driver": "rbd", "pool": src.pool, "image": src.image, "conf": src.conf}
    if src.namespace:
        node["namespace"] = src.namespace
    if src.snap:
        node["snapshot"] = src.snap
    if src.user:
        node["user"] = src.user
    return "json:" + json.dumps({"driver": "raw", "file": node})


def test_sources_open_in_qemu(array: RbdArray, tmp_path: Any) -> None:
    array.create("v1", 8 * MiB, "c1")
    put(array, "v1", "old", [0, 4 * MiB])
    array.snapshot("v1", "s1")
    put(array, "v1", "new", [0])
    for vid, label in (("s1", "old"), ("v1", "new")):
        out = tmp_path / f"{vid}.raw"
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", qemu_spec(array.source(vid)), str(out)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        data = out.read_bytes()
        assert len(data) == 8 * MiB
        assert data[:CHUNK] == chunk_bytes(label, 0)
        assert data[4 * MiB : 4 * MiB + CHUNK] == chunk_bytes("old", 4 * MiB)


def test_bad_input_is_one_clear_error(array: RbdArray) -> None:
    with pytest.raises(InvalidInput) as err:
        array.create("v1", SIZE, "no/slash")
    assert "no/slash" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataMissing):
        array.open("ghost").__enter__()
    array.create("v1", SIZE, "c1")
    array.snapshot("v1", "s1")
    with pytest.raises(ReadOnly):
        array.resize("s1", 2 * SIZE)
    with pytest.raises(InvalidInput):
        array.snapshot("s1", "s2")  # snapshots of snapshots: snapshot the base
    with pytest.raises(InvalidInput):
        array.changed("v1", "s1", CHUNK, method="fiemap")
    assert array.list_ids() == ["s1", "v1"] and array.partials() == []


def _image_io(pool_io: Any, loc: dict[str, Any]) -> Any:
    pool_io.set_namespace(loc["namespace"])
    return rbd.Image(pool_io, image_id=loc["image_id"], snapshot=loc["snap"])


def test_rbd_array_through_the_cli(
    ceph_cluster: Any, ceph_pool: str, pool_io: Any, tmp_path: Any
) -> None:
    """``array add --backend rbd`` and the vvol verbs end to end against ``vvhost serve``;
    data is written and read in the pool at the image the catalog's locator names."""
    from tests.integration.arraylab import running_plane

    ceph_args = ("--pool", ceph_pool, "--conf", ceph_cluster.conf)
    ceph_args += ("--keyring", ceph_cluster.admin_keyring)
    with running_plane(str(tmp_path)) as plane:
        plane("array", "add", "ceph", "--backend", "rbd", *ceph_args)
        plane.refused(
            4, "belongs to array", "array", "add", "ceph2", "--backend", "rbd", *ceph_args
        )
        plane("container", "create", "rc", "--capacity", "1G", "--array", "ceph")
        plane("vvol", "create", "--container", "rc", "--size", "16M", "--name", "d")
        loc = plane.json("vvol", "show", "d")["locator"]
        with _image_io(pool_io, loc) as img:
            img.write(chunk_bytes("A", 0), 0)
            img.write(chunk_bytes("A", 8 * MiB), 8 * MiB)
        plane("vvol", "snapshot", "d", "--name", "d@s1")
        with _image_io(pool_io, loc) as img:
            img.write(chunk_bytes("B", 8 * MiB), 8 * MiB)
        bitmap = plane.json("vvol", "bitmap", "d", "--base", "d@s1")
        assert bitmap["method"] == "fast-diff" and bitmap["ranges"] == [[8 * MiB, CHUNK]]
        plane("vvol", "clone", "d@s1", "--name", "c1")
        plane("vvol", "revert", "d", "--to", "d@s1")
        for name in ("d", "c1", "d@s1"):
            with _image_io(pool_io, plane.json("vvol", "show", name)["locator"]) as img:
                assert img.read(8 * MiB, CHUNK) == chunk_bytes("A", 8 * MiB), name
                assert img.read(0, CHUNK) == chunk_bytes("A", 0), name
        assert plane.json("vvol", "show", "d")["locator"]["image_id"] != loc["image_id"]
        for name in ("c1", "d@s1", "d"):
            plane("vvol", "delete", name)
        plane("array", "reap", "ceph")
        assert "consistent" in plane("audit").stdout
        assert names(pool_io, loc["namespace"]) == [] and trash(pool_io, loc["namespace"]) == []


def test_relocate_moves_a_vvol_and_its_snapshots_to_another_namespace(
    array: RbdArray, pool_io: Any
) -> None:
    array.create("v1", SIZE, "a")
    put(array, "v1", "one", [0, 4 * MiB])
    array.snapshot("v1", "s1")
    put(array, "v1", "two", [0])
    array.snapshot("v1", "s2")
    array.clone("s1", "c1", "a", linked=True)
    array.revert("v1", "s1", "op1")
    array.revert_commit("v1", "op1")
    put(array, "v1", "three", [4 * MiB])
    seen: list[tuple[int, int]] = []
    array.relocate(["v1", "s1", "s2"], "b", lambda d, t: seen.append((d, t)))
    array.relocate(["v1", "s1", "s2"], "b")  # again: nothing to do
    assert seen and seen[-1] == (2, 2)  # the head and the retired image holding s1, s2
    for vid in ("v1", "s1", "s2"):
        assert array.locator(vid)["namespace"] == "b"
    assert names(pool_io, "a") == ["vv-c1"]
    assert names(pool_io, "b") == ["vv-v1", "vv-v1.r-op1"]
    check(array, "v1", "one", [0])
    check(array, "v1", "three", [4 * MiB])
    check(array, "s1", "one", [0, 4 * MiB])
    check(array, "s2", "two", [0])
    check(array, "c1", "one", [0, 4 * MiB])  # its parent was re-linked
    spec = image_spec(pool_io, "a", array.locator("c1")["image_id"])
    assert spec is not None and spec["pool_namespace"] == "b"
    assert array.changed("s2", "s1", CHUNK).ranges == [(0, CHUNK)]
    for vid in ("c1", "s1", "s2", "v1"):
        array.remove(vid)
    array.reap()
    for ns in ("a", "b"):
        assert names(pool_io, ns) == [] and trash(pool_io, ns) == []
