"""Snapshot, linked clone and revert of a 4 GiB vvol holding 1 GiB of data, each
against ``cp --sparse=always --reflink=never`` (+ fsync) of the same backing file.

On XFS (reflink=1, loop-mounted) vvhost should reflink and be near-instant; on
ext4 it must sparse-copy, and should cost about what ``cp`` costs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fsfixtures import loop_capability, make_loop_fs
from vvhost.client import Client

from .common import (
    GiB,
    MiB,
    Result,
    check,
    content_digest,
    drop_caches,
    fstype,
    median,
    private_dir,
    real_copy,
    server,
    settle,
    shared_extents,
    skipped,
    timed,
    write_spread,
)

VVOL_SIZE = "4G"
WRITTEN = 1 * GiB
REWRITE = 64 * MiB  # what changes in the base before each revert
OPS = ("snapshot", "linked clone", "revert")


@dataclass
class Fs:
    label: str  # "xfs" or "ext4"
    target: str
    limit: float
    reflink: bool  # whether vvhost is expected to share extents here


XFS = Fs("xfs", "ratio <= 0.05", 0.05, True)
EXT4 = Fs("ext4", "ratio <= 1.2", 1.2, False)


@dataclass
class Op:
    """One vvhost operation with its untimed preparation, check and cleanup."""

    name: str
    call: Callable[[], dict[str, Any]]  # the timed vvhost call; returns the vvol it made
    source: str  # the file the alternative copies
    expect: str  # content digest the result must have
    prepare: Callable[[], None] = lambda: None
    cleanup: Callable[[dict[str, Any]], None] = lambda _v: None


def run_xfs(reps: int = 3) -> list[Result]:
    reason = loop_capability("xfs")
    if reason:
        return [skipped(f"xfs: {op}", XFS.target, XFS.limit, reason) for op in OPS]
    with private_dir("cow-xfs") as tmp, make_loop_fs(tmp, "xfs", "8G") as mnt:
        return _suite(tmp, mnt, XFS, reps)


def run_ext4(reps: int = 5) -> list[Result]:
    """Five rounds by default: ratios near 1 on a noisy disk need them."""
    with private_dir("cow-ext4") as tmp:
        kind = fstype(tmp)
        if kind != "ext4":
            reason = f"{tmp} is on {kind}, not ext4"
            return [skipped(f"ext4: {op}", EXT4.target, EXT4.limit, reason) for op in OPS]
        return _suite(tmp, tmp, EXT4, reps)


def _suite(tmp: str, data_root: str, fs: Fs, reps: int) -> list[Result]:
    alt_dir = os.path.join(data_root, "alt")
    os.makedirs(alt_dir)
    with server(os.path.join(tmp, "state")) as (_proc, c):
        array = c.array_add("bench", "dir", os.path.join(data_root, "array"))
        caps = array.get("capabilities", {})
        check(
            bool(caps.get("reflink")) == fs.reflink,
            f"array on {fs.label} probed reflink={caps.get('reflink')}, expected {fs.reflink}",
        )
        c.container_create("bench", "1T", arrays=["bench"])
        base = c.vvol_create("bench", VVOL_SIZE, name="base")
        path = base["path"]
        write_spread(path, WRITTEN, seed=1)
        digest = content_digest(path)
        snapshot = Op("snapshot", lambda: c.vvol_snapshot("base"), path, digest)
        clone = Op("linked clone", lambda: c.vvol_clone("base", linked=True), path, digest)
        snapshot.cleanup = clone.cleanup = _deleter(c)
        results = [_compare(op, fs, alt_dir, reps) for op in (snapshot, clone)]
        snap = c.vvol_snapshot("base", name="s1")  # what the revert goes back to
        revert = Op("revert", lambda: c.vvol_revert("base", "s1"), snap["path"], digest)
        revert.prepare = _rewriter(path, digest)
        results.append(_compare(revert, fs, alt_dir, reps))
        return results


def _deleter(c: Client) -> Callable[[dict[str, Any]], None]:
    return lambda v: c.vvol_delete(v["id"])


def _rewriter(path: str, original: str) -> Callable[[], None]:
    """Change 64 MiB of the base (half over data, half over holes) before a revert."""
    rounds = [0]

    def prepare() -> None:
        rounds[0] += 1
        write_spread(path, REWRITE, seed=100 + rounds[0], offset=2 * MiB)
        if rounds[0] == 1:
            check(content_digest(path) != original, "rewriting the base did not change it")

    return prepare


def _compare(op: Op, fs: Fs, alt_dir: str, reps: int) -> Result:
    """One untimed-for-the-record warm-up round that also checks the data, then
    ``reps`` timed rounds; the order of the two sides alternates between rounds."""
    res = Result(f"{fs.label}: {op.name}", fs.target, fs.limit)
    samples: dict[str, list[float]] = {"vvhost": [], "cp": []}
    dst = os.path.join(alt_dir, "copy.raw")

    def ours(verify: bool) -> float:
        op.prepare()
        cold = drop_caches()
        seconds, made = timed(op.call)
        if verify:
            check(
                content_digest(made["path"]) == op.expect,
                f"{res.name}: vvhost result does not hold the expected data",
            )
            shared = shared_extents(made["path"])
            if fs.reflink:
                check(shared > 0, f"{res.name}: expected shared (reflinked) extents, found none")
            res.notes.append(f"{res.name}: data checked; vvhost result has {shared} shared extents")
            if not cold:
                res.notes.append(f"{res.name}: page cache could not be dropped (not root?)")
        op.cleanup(made)
        settle()
        return seconds

    def theirs(verify: bool) -> float:
        drop_caches()
        seconds, _ = timed(lambda: real_copy(op.source, dst))
        if verify:
            check(content_digest(dst) == op.expect, f"{res.name}: cp made a different file")
            check(shared_extents(dst) == 0, f"{res.name}: cp --reflink=never shared extents")
        os.unlink(dst)
        settle()
        return seconds

    for rep in range(-1, reps):
        pair = [("vvhost", ours), ("cp", theirs)]
        for side, fn in pair if rep % 2 == 0 else pair[::-1]:
            seconds = fn(rep < 0)
            if rep >= 0:
                samples[side].append(seconds)
    ours_s, theirs_s = samples["vvhost"], samples["cp"]
    res.measured, res.baseline = median(ours_s), median(theirs_s)
    res.samples = samples
    res.notes.append(
        f"{res.name}: {reps} rounds, vvhost {min(ours_s):.3f}-{max(ours_s):.3f} s, "
        f"cp {min(theirs_s):.3f}-{max(theirs_s):.3f} s (ratio of minima "
        f"{min(ours_s) / min(theirs_s):.3g})"
    )
    return res.finish()
