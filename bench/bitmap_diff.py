"""``vvol bitmap --base`` on XFS against reading and comparing both files.

A 4 GiB vvol holds 1 GiB of data; after a snapshot, 64 MiB is rewritten in
128 KiB pieces scattered over the whole volume (over data and over holes).
vvhost should find the changed 64 KiB chunks from the extent maps without
reading data; the obvious alternative reads both files in 1 MiB blocks and
compares them.  Both answers must equal the chunks that were written.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from tests.fsfixtures import loop_capability, make_loop_fs

from .common import (
    GiB,
    KiB,
    MiB,
    Result,
    check,
    drop_caches,
    fill_block,
    median,
    private_dir,
    server,
    skipped,
    timed,
    write_spread,
)

NAME = "xfs: bitmap --base"
TARGET = "ratio <= 0.1 (10x)"
LIMIT = 0.1
VVOL_SIZE = 4 * GiB
WRITTEN = 1 * GiB
CHANGED = 64 * MiB
PIECE = 128 * KiB  # size of each scattered write
CHUNK = 64 * KiB  # bitmap granularity
READ = 1 * MiB  # block size of the naive comparison


def scatter(path: str, total: int, seed: int) -> set[int]:
    """Write ``total`` bytes in PIECE-sized pieces at random PIECE-aligned offsets;
    fsync; return the offsets of the CHUNK-sized chunks written."""
    size = os.path.getsize(path)
    rng = random.Random(seed)
    slots = rng.sample(range(size // PIECE), total // PIECE)
    chunks: set[int] = set()
    fd = os.open(path, os.O_WRONLY)
    try:
        for slot in slots:
            off = slot * PIECE
            os.pwrite(fd, fill_block(seed, slot + 1, PIECE), off)
            chunks.update(range(off, off + PIECE, CHUNK))
        os.fsync(fd)
    finally:
        os.close(fd)
    return chunks


def naive_diff(path: str, base: str) -> set[int]:
    """Read both files fully, 1 MiB at a time; return the CHUNK offsets that differ."""
    changed: set[int] = set()
    with open(path, "rb", buffering=0) as fa, open(base, "rb", buffering=0) as fb:
        a, b = fa.fileno(), fb.fileno()
        off = 0
        while True:
            x, y = os.pread(a, READ, off), os.pread(b, READ, off)
            if not x and not y:
                return changed
            if x != y:
                for c in range(0, max(len(x), len(y)), CHUNK):
                    if x[c : c + CHUNK] != y[c : c + CHUNK]:
                        changed.add(off + c)
            off += READ


def chunk_set(ranges: list[list[int]]) -> set[int]:
    """Expand [offset, length] ranges into CHUNK offsets."""
    return {c for off, length in ranges for c in range(off, off + length, CHUNK)}


def run(reps: int = 3) -> list[Result]:
    reason = loop_capability("xfs")
    if reason:
        return [skipped(NAME, TARGET, LIMIT, reason)]
    with private_dir("bitmap") as tmp, make_loop_fs(tmp, "xfs", "8G") as mnt:
        with server(os.path.join(tmp, "state")) as (_proc, c):
            c.array_add("bench", "dir", os.path.join(mnt, "array"))
            c.container_create("bench", "1T", arrays=["bench"])
            path = c.vvol_create("bench", VVOL_SIZE, name="base")["path"]
            write_spread(path, WRITTEN, seed=1)
            snap = c.vvol_snapshot("base", name="s1")["path"]
            expected = scatter(path, CHANGED, seed=7)
            return [_measure(c.vvol_bitmap, path, snap, expected, reps)]


def _measure(
    bitmap: Callable[..., dict[str, Any]], path: str, snap: str, expected: set[int], reps: int
) -> Result:
    res = Result(NAME, TARGET, LIMIT)
    ours: list[float] = []
    theirs: list[float] = []
    for rep in range(reps):
        drop_caches()
        seconds, answer = timed(lambda: bitmap("base", base="s1", chunk="64K"))
        ours.append(seconds)
        drop_caches()
        seconds_naive, naive = timed(lambda: naive_diff(path, snap))
        theirs.append(seconds_naive)
        if rep == 0:
            got = chunk_set(answer["ranges"])
            check(naive == expected, f"naive diff found {len(naive)} chunks, wrote {len(expected)}")
            check(
                got == naive,
                f"bitmap ({answer['method']}) has {len(got - naive)} extra and "
                f"{len(naive - got)} missing chunks against the naive diff",
            )
            res.notes.append(
                f"{NAME}: method={answer['method']}, {len(got)} chunks / "
                f"{answer['bytes'] // MiB} MiB changed in {len(answer['ranges'])} ranges, "
                "equal to the naive diff"
            )
    res.measured, res.baseline = median(ours), median(theirs)
    res.samples = {"vvhost": ours, "naive": theirs}
    return res.finish()
