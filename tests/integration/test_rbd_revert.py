"""Revert on RBD arrays: the spare clone, the work left for after the answer, and
crashes in the middle, against a real private Ceph cluster (tests/cephfixtures.py).

    backend:  revert -> spare made after it -> next revert takes it (no clone on
              the way) -> undo / crash / snapshot removal with a spare -> audit clean
              and, after everything is removed and reaped, an empty pool
    serve:    kill -9 at each revert crash point while the revert takes a spare;
              the restart finishes or undoes it, ``vvhost audit`` stays clean

Every step writes known patterns and checks them afterwards.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
import rbd

from tests.crashing import crash_during
from tests.patterns import CHUNK, Patterns, chunk_bytes
from vvhost.arrays import rbdaudit
from vvhost.arrays.rbdarray import RbdArray
from vvhost.arrays.settings import RbdSettings
from vvhost.daemon import ServerProcess
from vvhost.faults import FAULT_ENV
from vvhost.service.context import DEFAULT_ARRAY_ENV

MiB = 1 << 20
SIZE = 64 * MiB
OFFSETS = [0, 20 * MiB, 40 * MiB]


def _settings(lab: Any, pool: str) -> RbdSettings:
    return RbdSettings(pool=pool, conf=lab.conf, keyring=lab.admin_keyring)


def put(arr: RbdArray, vvol: str, label: str) -> None:
    with arr.open(vvol, writable=True) as vol:
        for off in OFFSETS:
            vol.write(off, chunk_bytes(label, off))


def holds(arr: RbdArray, vvol: str, label: str) -> bool:
    with arr.open(vvol) as vol:
        return all(vol.read(off, CHUNK) == chunk_bytes(label, off) for off in OFFSETS)


def names(io: Any, ns: str) -> list[str]:
    io.set_namespace(ns)
    return sorted(str(i["name"]) for i in rbd.RBD().list2(io))


def trash(io: Any, ns: str) -> list[str]:
    io.set_namespace(ns)
    return sorted(str(t["name"]) for t in rbd.RBD().trash_list(io))


def snaps_in_trash_namespace(io: Any, ns: str, image: str) -> list[str]:
    io.set_namespace(ns)
    with rbd.Image(io, image, read_only=True) as img:
        return [
            str(s["name"])
            for s in img.list_snaps()
            if s.get("namespace") == rbd.RBD_SNAP_NAMESPACE_TYPE_TRASH
        ]


def clean(arr: RbdArray) -> None:
    found = rbdaudit.report(arr)
    assert {k: v for k, v in found.items() if v} == {}, found


def settled(arr: RbdArray) -> None:
    assert arr.after.drain(timeout=60), "the work after the answer did not finish"


def test_the_next_revert_takes_the_spare(array: RbdArray, pool_io: Any) -> None:
    array.create("v1", SIZE, "c1")
    put(array, "v1", "p1")
    array.snapshot("v1", "s1")
    put(array, "v1", "p2")
    array.snapshot("v1", "s2")
    put(array, "v1", "p3")
    first = array.locator("v1")["image_id"]
    array.revert("v1", "s1", "op1")  # no spare yet: a clone is made on the way
    assert array.index.staged("v1")["op1"].name == "vv-v1.r-op1"
    array.revert_commit("v1", "op1")
    assert array.locator("v1")["image"] == "vv-v1.r-op1"
    settled(array)
    spare = array.index.spare("s1")
    assert spare is not None and spare.name == "vv-v1.p-op1" and spare.image_id
    assert "vv-v1.p-op1" in names(pool_io, "c1")
    assert "vv-v1" in names(pool_io, "c1")  # retired, still read by s1 and s2
    assert array.allocated("v1") == 0  # the answer's figure; the pool says the same
    assert array.allocated("v1") == 0
    clean(array)

    put(array, "v1", "p4")
    array.revert("v1", "s1", "op2")  # the spare will do: nothing written, no new image
    assert array.index.spare("s1") == spare and array.index.staged("v1") == {}
    assert "vv-v1.r-op2" not in names(pool_io, "c1") and holds(array, "v1", "p4")
    array.revert_commit("v1", "op2")  # takes it: one index write
    array.revert_commit("v1", "op2", "s1")  # idempotent
    assert array.locator("v1")["image_id"] == spare.image_id
    assert holds(array, "v1", "p1") and holds(array, "s1", "p1") and holds(array, "s2", "p2")
    settled(array)
    assert "vv-v1.r-op1" in names(pool_io, "c1")  # retired: the reaper trashes it
    clean(array)
    array.reap()  # the clone op1 made nobody needs (no snapshot on it): gone
    assert "vv-v1.r-op1" not in names(pool_io, "c1")
    assert array.index.spare("s1") is not None  # made again for the next one
    clean(array)

    # undo before the commit: the vvol keeps what it held, the spare stays the snapshot's
    put(array, "v1", "p5")
    spare = array.index.spare("s1")
    array.revert("v1", "s1", "op3")
    array.revert_undo("v1", "op3")
    array.revert_undo("v1", "op3")
    assert holds(array, "v1", "p5") and array.index.spare("s1") == spare
    assert "vv-v1.p-op2" in names(pool_io, "c1")
    clean(array)

    # the newer snapshot, then the older one with a spare on it, then the vvol
    array.revert("v1", "s2", "op4")
    array.revert_commit("v1", "op4")
    settled(array)
    assert holds(array, "v1", "p2") and array.index.spare("s2") is not None
    array.revert("v1", "s1", "op5")  # the vvol no longer reads s2, only s2's spare does
    array.revert_commit("v1", "op5")
    settled(array)
    array.remove("s2")  # its spare goes first, so the RBD snapshot really goes
    assert array.index.spare("s2") is None
    array.reap()  # purges the trashed clone of s2 (op4's); nothing else reads s2 then
    assert snaps_in_trash_namespace(pool_io, "c1", "vv-v1") == []
    assert holds(array, "s1", "p1") and holds(array, "v1", "p1")
    clean(array)
    for vid in ("s1", "v1"):
        array.remove(vid)
    array.reap()
    assert first and names(pool_io, "c1") == [] and trash(pool_io, "c1") == []
    assert array.index.spares() == {} and array.index.retired() == {}


def test_work_left_for_after_the_answer_is_done_by_the_reaper(
    array: RbdArray, pool_io: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process stops right after answering: the old image stays retired (recorded,
    so nothing is orphaned) and no spare is made; the reaper trashes the image and
    the next revert clones as it would without a spare."""
    array.create("v1", SIZE, "c1")
    put(array, "v1", "p1")
    array.snapshot("v1", "s1")
    put(array, "v1", "p2")
    monkeypatch.setattr(array.after, "later", lambda *args: None)
    array.revert("v1", "s1", "op1")
    array.revert_commit("v1", "op1")
    array.revert("v1", "s1", "op2")
    array.revert_commit("v1", "op2")
    assert "vv-v1.r-op1" in names(pool_io, "c1") and array.index.spares() == {}
    assert len(array.index.retired()) == 2
    clean(array)  # retired images are known
    array.reap()
    assert "vv-v1.r-op1" not in names(pool_io, "c1")  # nobody needed it
    assert "vv-v1" in names(pool_io, "c1")  # s1 still reads it
    assert holds(array, "v1", "p1") and holds(array, "s1", "p1")
    clean(array)


def test_crashes_around_spares_leave_only_what_recovery_finds(
    array: RbdArray, ceph_cluster: Any, ceph_pool: str, pool_io: Any
) -> None:
    array.create("v1", SIZE, "c1")
    put(array, "v1", "p1")
    array.snapshot("v1", "s1")
    put(array, "v1", "p2")
    # a spare named in the index whose clone was never made (died in between)
    array.index.apply(put={"spare:s1": _named("c1")})
    clean(array)
    array.revert("v1", "s1", "op1")  # not whole: dropped, a clone made instead
    array.revert_commit("v1", "op1")
    settled(array)
    assert array.locator("v1")["image"] == "vv-v1.r-op1" and holds(array, "v1", "p1")
    clean(array)

    # staged (the spare chosen), then the process died: another instance, no memory;
    # recovery after the commit point names the snapshot (from the journal)
    put(array, "v1", "p3")
    spare = array.index.spare("s1")
    array.revert("v1", "s1", "op2")
    other = RbdArray("r1", _settings(ceph_cluster, ceph_pool), "array-1")
    try:
        other.revert_commit("v1", "op2", "s1")
        assert spare is not None and other.locator("v1")["image_id"] == spare.image_id
        assert holds(other, "v1", "p1")
        settled(other)
        assert other.index.spare("s1").name == "vv-v1.p-op2"  # made after it
        other.revert_commit("v1", "op2", "s1")  # done already: that spare stays
        assert other.locator("v1")["image_id"] == spare.image_id
        assert other.index.spare("s1").name == "vv-v1.p-op2"
        clean(other)
        # a clone staged by name only, found by its name at commit
        put(other, "v1", "p4")
        other.reverts.drop_spare("s1")
        other.revert("v1", "s1", "op3")
        other.index.apply(put={"staged:v1:op3": _named("c1", other.index.staged("v1")["op3"])})
        third = RbdArray("r1", _settings(ceph_cluster, ceph_pool), "array-1")
        try:
            third.revert_commit("v1", "op3")
            assert holds(third, "v1", "p1")
            third.reap()
            clean(third)
        finally:
            third.close()
    finally:
        other.close()


def _named(ns: str, image: Any = None) -> Any:
    """An index record naming an image without its id (``image``'s name, or one never made)."""
    from vvhost.arrays.rbdindex import Image

    return Image(ns, image.name if image is not None else "vv-v1.p-lost")


# -- through ``vvhost serve``: kill -9 at each revert crash point ------------------------------


class Plane:
    def __init__(self, tmp: str, lab: Any, pool: str) -> None:
        self.state = os.path.join(tmp, "state")
        self.socket = os.path.join(tmp, "s.sock")
        spec = {"backend": "rbd", "pool": pool, "conf": lab.conf, "keyring": lab.admin_keyring}
        self.env = {DEFAULT_ARRAY_ENV: json.dumps(spec)}

    def server(self, fault: str = "") -> ServerProcess:
        env = {**self.env, FAULT_ENV: fault} if fault else self.env
        return ServerProcess(self.state, socket_path=self.socket, env=env).start()

    def crash_during(self, fault: str, *cli_args: str) -> None:
        crash_during(self.server, self.state, self.socket, fault, *cli_args)


def _spares(pool_io: Any, ns: str) -> set[str]:
    return {n for n in names(pool_io, ns) if ".p-" in n}


def _wait_spare(
    pool_io: Any, ns: str, had: frozenset[str] = frozenset(), deadline: float = 60
) -> None:
    """Wait until the pool holds a spare clone not in ``had`` (one is made after the
    answer, named after its operation); the test's own librbd client then opens
    nothing the server is still changing."""
    end = time.monotonic() + deadline
    while not _spares(pool_io, ns) - had:
        assert time.monotonic() < end, "no spare was made after the revert"
        time.sleep(0.1)


@pytest.mark.parametrize("point", ["revert:staged", "revert:committed", "revert:replaced"])
def test_kill_during_a_revert_that_takes_a_spare(
    point: str, tmp_path: str, ceph_cluster: Any, ceph_pool: str, pool_io: Any
) -> None:
    p = Plane(str(tmp_path), ceph_cluster, ceph_pool)
    patterns = Patterns()
    patterns.ceph = (ceph_cluster.conf, ceph_cluster.admin_keyring)
    offsets = [0, 5 * CHUNK, 300 * CHUNK]
    server = p.server()
    api = server.client()
    try:
        api.container_create("pool", "1G")
        api.vvol_create("pool", "32M", name="d")
        patterns.write(api.vvol("d"), "A", offsets)
        api.vvol_snapshot("d", name="d@s1")
        patterns.write(api.vvol("d"), "B", offsets)
        api.vvol_revert("d", "d@s1")
        ns = api.vvol("d")["where"].split("/")[1]
        _wait_spare(pool_io, ns)
        patterns.write(api.vvol("d"), "C", offsets)
    finally:
        api.close()
        server.stop()
    p.crash_during(point, "vvol", "revert", "d", "--to", "d@s1")
    server = p.server()
    api = server.client()
    try:
        assert api.health()["recovered"], "the restart recovered nothing"
        report = api.audit()
        assert report["ok"], report["problems"]
        d = api.vvol("d")
        assert d["state"] == "ready"
        patterns.check(d, "C" if point == "revert:staged" else "A", offsets)
        patterns.check(api.vvol("d@s1"), "A", offsets)
        had = frozenset(_spares(pool_io, ns))
        api.vvol_revert("d", "d@s1")  # and it still works
        _wait_spare(pool_io, ns, had)
        patterns.check(api.vvol("d"), "A", offsets)
        api.array_reap(d["array"])
        report = api.audit()
        assert report["ok"], report["problems"]
        api.vvol_delete("d@s1")
        api.vvol_delete("d")
        # the killed daemon's watches on images it had open (a clone it was making)
        # last until Ceph times them out: until then the reaper leaves those images
        end = time.monotonic() + 120
        while True:
            api.array_reap(d["array"])
            left = [n for n in names(pool_io, ns) if n.startswith("vv-")] + trash(pool_io, ns)
            if not left or time.monotonic() > end:
                break
            time.sleep(2)
        assert left == []
        assert api.audit()["ok"]
    finally:
        api.close()
        server.stop()
