"""The API contract: run in-process and over the unix socket, on ext4 and XFS."""

from __future__ import annotations

import os

import pytest

from tests.patterns import CHUNK, Patterns
from vvhost.client import Client
from vvhost.errors import (
    Busy,
    CapacityExceeded,
    HasDependants,
    InvalidInput,
    NotFound,
    ReadOnly,
    StaleGeneration,
)

MiB = 1 << 20


def _audit_ok(api: Client) -> None:
    report = api.audit()
    assert report["ok"], report["problems"]


def test_container_lifecycle(api: Client) -> None:
    c = api.container_create("pool", "1G")
    assert c["capacity"] == 1 << 30 and c["provisioned"] == 0
    assert [x["name"] for x in api.containers()] == ["pool"]
    with pytest.raises(InvalidInput):
        api.container_create("pool/evil", "1G")
    v = api.vvol_create("pool", "16M")
    with pytest.raises(HasDependants):
        api.container_delete("pool")
    api.vvol_delete(v["id"])
    api.container_delete("pool")
    with pytest.raises(NotFound):
        api.container("pool")
    _audit_ok(api)


def test_create_show_and_bad_sizes(api: Client, patterns: Patterns) -> None:
    api.container_create("pool", "100M")
    v = api.vvol_create("pool", "64M", type="swap", name="sw", metadata={"vm": "a"})
    for key in (
        "id",
        "name",
        "type",
        "container",
        "size",
        "used",
        "parent",
        "snapshots",
        "children",
        "state",
        "generation",
        "metadata",
        "where",
    ):
        assert key in v
    assert (v["size"], v["type"], v["state"], v["metadata"]) == (
        64 * MiB,
        "swap",
        "ready",
        {"vm": "a"},
    )
    assert patterns.size(v) == 64 * MiB and v["used"] == 0
    assert api.vvol("sw")["id"] == v["id"]
    for bad in ("1000", "1.5G", "-1M", "0", "12Q"):
        with pytest.raises(InvalidInput):
            api.vvol_create("pool", bad)
    with pytest.raises(InvalidInput):
        api.vvol_create("pool", "1M", type="bogus")
    with pytest.raises(CapacityExceeded):
        api.vvol_create("pool", "64M")
    assert len(api.vvols()) == 1  # nothing half-made
    assert api.container("pool")["provisioned"] == 64 * MiB
    _audit_ok(api)


def test_snapshot_revert_keeps_newer(api: Client, patterns: Patterns) -> None:
    api.container_create("pool", "1G")
    v = api.vvol_create("pool", "32M", name="disk")
    path = v
    offsets = [0, 3 * CHUNK, 100 * CHUNK, 500 * CHUNK - CHUNK]
    patterns.write(path, "A", offsets)
    s1 = api.vvol_snapshot("disk", name="disk@s1")
    assert s1["readonly"] and s1["parent"] == v["id"] and s1["relation"] == "snapshot"
    patterns.write(path, "B", offsets[1:3])
    s2 = api.vvol_snapshot("disk", name="disk@s2")
    patterns.write(path, "C", offsets[:2])
    sha = {"s1": patterns.digest(s1), "s2": patterns.digest(s2)}
    patterns.check(s1, "A", offsets)
    patterns.check(s2, "B", offsets[1:3])

    gen = api.vvol("disk")["generation"]
    out = api.vvol_revert("disk", "disk@s1")
    assert patterns.digest(out) == sha["s1"]  # (on RBD the data is now a clone of s1)
    assert out["generation"] == gen + 1 and out["state"] == "ready"
    assert sorted(out["snapshots"]) == sorted([s1["id"], s2["id"]])  # s2 kept, safety gone
    assert patterns.digest(s2) == sha["s2"]
    out = api.vvol_revert("disk", "disk@s2")
    assert patterns.digest(out) == sha["s2"]
    patterns.check(out, "B", offsets[1:3])
    with pytest.raises(ReadOnly):
        api.vvol_revert("disk@s1", "disk@s2")
    other = api.vvol_create("pool", "32M")
    with pytest.raises(InvalidInput):
        api.vvol_revert(other["id"], "disk@s1")  # not a snapshot of that vvol
    with pytest.raises(StaleGeneration):
        api.vvol_revert("disk", "disk@s1", generation=1)
    _audit_ok(api)


def test_snapshots_are_read_only_and_refcounted(api: Client, patterns: Patterns) -> None:
    api.container_create("pool", "1G")
    v = api.vvol_create("pool", "8M", name="d")
    s = api.vvol_snapshot("d")
    with pytest.raises(ReadOnly):
        api.vvol_extend(s["id"], "16M")
    with pytest.raises(InvalidInput):
        api.vvol_snapshot(s["id"])
    with pytest.raises(HasDependants) as err:
        api.vvol_delete("d")
    assert s["name"] in str(err.value)
    assert api.vvol("d")["refs"] == 1
    clone = api.vvol_clone(s["id"], linked=True, name="lc")
    assert clone["parent"] == s["id"] and clone["relation"] == "clone"
    assert api.vvol(s["id"])["refs"] == 1 and api.vvol(s["id"])["children"] == [clone["id"]]
    with pytest.raises(HasDependants):
        api.vvol_delete(s["id"])
    api.vvol_delete("lc")
    api.vvol_delete(s["id"])
    assert api.vvol("d")["refs"] == 0
    api.vvol_delete("d")
    assert not patterns.exists(v)
    assert api.container("pool")["provisioned"] == 0
    _audit_ok(api)


def test_extend_and_clones(api: Client, patterns: Patterns) -> None:
    api.container_create("pool", "200M")
    v = api.vvol_create("pool", "16M", name="d")
    patterns.write(v, "X", [0, 200 * CHUNK])
    assert api.vvol_extend("d", "16M")["generation"] == v["generation"]  # same size: no change
    grown = api.vvol_extend("d", "32M")
    assert grown["size"] == 32 * MiB and patterns.size(v) == 32 * MiB
    with pytest.raises(InvalidInput):
        api.vvol_extend("d", "8M")
    with pytest.raises(CapacityExceeded):
        api.vvol_extend("d", "1G")
    full = api.vvol_clone("d", name="full")
    assert full["parent"] is None and full["size"] == 32 * MiB
    patterns.check(full, "X", [0, 200 * CHUNK])
    patterns.write(full, "Y", [0])
    patterns.check(v, "X", [0])  # independent
    api.vvol_delete("d")  # a full clone does not hold its source
    patterns.check(full, "X", [200 * CHUNK])
    _audit_ok(api)


def test_move_between_containers_and_arrays(
    api: Client, patterns: Patterns, plane_dir: str
) -> None:
    api.array_add("second", "dir", os.path.join(plane_dir, "second-array"))
    api.container_create("one", "1G")
    api.container_create("two", "1G")
    api.container_create("far", "1G", arrays=["second"])
    v = api.vvol_create("one", "16M", name="d")
    patterns.write(v, "A", [0, 7 * CHUNK])
    s = api.vvol_snapshot("d")
    patterns.write(v, "B", [7 * CHUNK])
    sha_v, sha_s = patterns.digest(v), patterns.digest(s)

    moved = api.vvol_move("d", "two")  # same array: dir: catalog only; RBD: its namespace
    assert moved["container"] == "two"
    assert (moved["where"] == v["where"]) == patterns.is_file(v)
    assert patterns.digest(moved) == sha_v
    assert patterns.digest(api.vvol(s["id"])) == sha_s
    moved = api.vvol_move("d", "far")
    assert moved["array"] == "second" and moved["where"] != v["where"]
    snap = api.vvol(s["id"])
    assert snap["container"] == "far" and snap["array"] == "second"
    assert patterns.digest(moved) == sha_v and patterns.digest(snap) == sha_s
    assert not patterns.exists(v) and not patterns.exists(s)
    # a snapshot is charged its unique bytes, not its size (see spacemodel.py)
    charged = 16 * MiB + api.vvol(s["id"])["charge"]
    assert [c["provisioned"] for c in api.containers()] == [0, 0, charged]
    with pytest.raises(InvalidInput):
        api.vvol_move(s["id"], "one")
    with pytest.raises(CapacityExceeded):
        api.container_create("tiny", "8M")
        api.vvol_move("d", "tiny")
    _audit_ok(api)


def test_bitmap_and_copy_diffs(api: Client, patterns: Patterns) -> None:
    api.container_create("pool", "1G")
    v = api.vvol_create("pool", "64M", name="d")
    first = [0, 10 * CHUNK, 11 * CHUNK, 900 * CHUNK]
    patterns.write(v, "A", first)
    alloc = api.vvol_bitmap("d")
    written = [[0, CHUNK], [10 * CHUNK, 2 * CHUNK], [900 * CHUNK, CHUNK]]
    if patterns.is_file(v):
        assert alloc["ranges"] == written
    else:  # RBD maps allocation per object (4 MiB): each written chunk is inside a range
        assert all(any(o <= w < o + n for o, n in alloc["ranges"]) for w, _ in written)
        assert alloc["bytes"] <= len(written) * (4 << 20)
    s1 = api.vvol_snapshot("d")
    changed = [11 * CHUNK, 12 * CHUNK, 500 * CHUNK]
    patterns.write(v, "B", changed)
    s2 = api.vvol_snapshot("d")
    diff = api.vvol_bitmap(s2["id"], base=s1["id"])
    if patterns.is_file(v):
        assert diff["ranges"] == [[11 * CHUNK, 2 * CHUNK], [500 * CHUNK, CHUNK]], diff
        assert diff["bytes"] == 3 * CHUNK
    else:  # RBD: an object new since s1 counts from its start (a superset, still small)
        assert all(any(o <= w < o + n for o, n in diff["ranges"]) for w in changed), diff
        assert 10 * CHUNK not in [o for o, _ in diff["ranges"]] and diff["bytes"] <= 8 << 20
    replica = api.vvol_clone(s1["id"], name="replica")
    result = api.vvol_copy_diffs(s2["id"], base=s1["id"], to="replica")
    assert result["bytes"] == 3 * CHUNK if patterns.is_file(v) else result["bytes"] >= 3 * CHUNK
    assert patterns.digest(replica) == patterns.digest(s2)
    with pytest.raises(ReadOnly):
        api.vvol_copy_diffs("d", base=s1["id"], to=s2["id"])
    with pytest.raises(InvalidInput):
        api.vvol_bitmap("d", chunk="3000")
    _audit_ok(api)


def test_metadata_and_generations(api: Client) -> None:
    api.container_create("pool", "1G")
    v = api.vvol_create("pool", "8M", name="d", metadata={"a": "1"})
    out = api.vvol_meta("d", ["b=2", "a="])
    assert out["metadata"] == {"b": "2"} and out["generation"] == v["generation"] + 1
    with pytest.raises(StaleGeneration):
        api.vvol_meta("d", ["c=3"], generation=v["generation"])
    with pytest.raises(InvalidInput):
        api.vvol_meta("d", ["novalue"])
    with pytest.raises(NotFound):
        api.vvol_meta("nope", ["a=1"])


def test_snapshot_group_prepare_cut_abort(api: Client, patterns: Patterns) -> None:
    """A consistency group: the catalog half first, then the data of all at once."""
    api.container_create("pool", "1G")
    disks = [api.vvol_create("pool", "16M", name=f"d{i}") for i in range(2)]
    for d in disks:
        patterns.write(d, "A", [0, 5 * CHUNK])
    prepared = api.snapshot_prepare([d["id"] for d in disks], ["d0@g1", "d1@g1"])
    assert [p["base"] for p in prepared] == [d["id"] for d in disks]
    assert all(api.vvol(p["id"])["state"] == "creating" for p in prepared)
    with pytest.raises(Busy):  # a prepared snapshot cannot be used yet
        api.vvol_revert("d0", prepared[0]["id"])
    for d in disks:  # written or discarded after prepare, before the cut: in the snapshot
        patterns.write(d, "B", [5 * CHUNK])
        patterns.discard(d, 0, CHUNK)
    cut = api.snapshot_cut([p["id"] for p in prepared])
    assert [c["state"] for c in cut] == ["creating", "creating"]
    taken = api.snapshot_commit([p["id"] for p in prepared])
    assert [t["state"] for t in taken] == ["ready", "ready"] and all(t["readonly"] for t in taken)
    for t in taken:
        assert patterns.read(t, 0, CHUNK) == bytes(CHUNK)
        patterns.check(t, "B", [5 * CHUNK])
    with pytest.raises(InvalidInput):  # cut again
        api.snapshot_cut([taken[0]["id"]])
    again = api.snapshot_prepare([d["id"] for d in disks], ["d0@g2", "d1@g2"])
    with pytest.raises(InvalidInput):  # not cut yet: nothing to commit
        api.snapshot_commit([again[0]["id"]])
    api.snapshot_abort([p["id"] for p in again])  # prepared only: dropped
    again = api.snapshot_prepare([d["id"] for d in disks], ["d0@g2", "d1@g2"])
    api.snapshot_cut([p["id"] for p in again])
    api.snapshot_abort([p["id"] for p in again])  # cut, not committed: dropped
    api.snapshot_abort([p["id"] for p in again])  # idempotent
    assert sorted(v["name"] for v in api.vvols()) == ["d0", "d0@g1", "d1", "d1@g1"]
    with pytest.raises(InvalidInput):  # the same vvol twice: nothing is prepared
        api.snapshot_prepare([disks[0]["id"], disks[0]["id"]], ["x", "y"])
    with pytest.raises(NotFound):
        api.snapshot_prepare([disks[0]["id"], "nope"], ["d0@g3", "n@g3"])
    assert len(api.vvols()) == 4
    _audit_ok(api)
