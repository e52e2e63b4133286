"""``convert cow-to-redo`` on XFS against building the same chain with ``qemu-img convert``.

A 4 GiB vvol holds 1 GiB of data; five times a snapshot is taken and then 5% of
the disk is changed in 128 KiB pieces scattered over the whole volume (one piece
in ten is overwritten with zeros, the rest with new data).  The six points (five
snapshots, then the current state) become a qcow2 chain:

* vvhost: ``convert.cow_to_redo``, which asks the control plane for the changed
  chunks (from shared extents, reading no data) and writes only those;
* the obvious alternative: per point ``qemu-img convert -O qcow2 [-B PREV -F qcow2]
  POINT.raw OUT.qcow2``, which reads each point and its backing chain in full to
  find what differs.

Rows: wall time (vvhost / alternative, limit 1.0), and the bytes vvhost wrote
against the bytes that changed between consecutive points (the first point's
data included; limit 1.1).  Both chains must ``qemu-img compare`` equal to every
point.  One timed round by default: the whole group takes about two minutes.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import partial

from tests.fsfixtures import loop_capability, make_loop_fs
from vvhost import convert
from vvhost.client import Client

from .common import (
    BLOCK,
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
    settle,
    skipped,
    timed,
    write_spread,
)
from .common import (
    run as run_cmd,
)

TIME_NAME = "xfs: convert cow-to-redo (6 points)"
TIME_TARGET = "ratio <= 1.0"
BYTES_NAME = "xfs: cow-to-redo GiB written / changed"
BYTES_TARGET = "ratio <= 1.1"
VVOL_SIZE = 4 * GiB
WRITTEN = 1 * GiB
SNAPSHOTS = 5
CHANGE = VVOL_SIZE // 20  # 5% of the disk after each snapshot
PIECE = 128 * KiB
CHUNK = 64 * KiB
ZERO_EVERY = 10  # one piece in ten becomes zeros


@dataclass
class Content:
    """What each 64 KiB chunk of the vvol holds (absent: zeros), to count what a
    step really changed."""

    chunks: dict[int, int] = field(default_factory=dict)

    def set(self, chunk: int, stamp: int | None) -> bool:
        """Record new content; True when it differs from the old."""
        old = self.chunks.get(chunk)
        if stamp is None:
            self.chunks.pop(chunk, None)
        else:
            self.chunks[chunk] = stamp
        return old != stamp


def fill(path: str, content: Content) -> int:
    """The first point: 1 GiB in 4 MiB blocks spread over the disk."""
    for i, off in enumerate(write_spread(path, WRITTEN, seed=1)):
        for c in range(off // CHUNK, (off + BLOCK) // CHUNK):
            content.set(c, (1 << 32) + i)
    return len(content.chunks) * CHUNK


def change(path: str, content: Content, step: int) -> int:
    """Rewrite 5% of the disk in scattered pieces; return the bytes that changed."""
    rng = random.Random(1000 + step)
    slots = rng.sample(range(VVOL_SIZE // PIECE), CHANGE // PIECE)
    changed = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        for n, slot in enumerate(slots):
            off = slot * PIECE
            zero = n % ZERO_EVERY == 0
            data = bytes(PIECE) if zero else fill_block(step, slot + 1, PIECE)
            os.pwrite(fd, data, off)
            for c in range(off // CHUNK, (off + PIECE) // CHUNK):
                if content.set(c, None if zero else (step << 32) + c):
                    changed += CHUNK
        os.fsync(fd)
    finally:
        os.close(fd)
    return changed


def qemu_chain(points: list[str], out: str) -> None:
    """The alternative: each point converted against the layer below it."""
    prev: str | None = None
    for i, point in enumerate(points, start=1):
        name = f"{i:02d}.qcow2"
        backing: list[str] = ["-B", prev, "-F", "qcow2"] if prev else []
        run_cmd("qemu-img", "convert", "-O", "qcow2", *backing, point, os.path.join(out, name))
        run_cmd("sync", os.path.join(out, name))
        prev = name


def same_points(files: list[str], points: list[str], what: str) -> None:
    for f, p in zip(files, points, strict=True):
        done = subprocess.run(
            ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", f, p],
            capture_output=True,
            text=True,
            check=False,
        )
        check(
            done.returncode == 0,
            f"{what}: {os.path.basename(f)} differs from its point: {done.stdout}{done.stderr}",
        )


def run(reps: int = 1) -> list[Result]:
    reason = loop_capability("xfs")
    if reason:
        return [
            skipped(TIME_NAME, TIME_TARGET, 1.0, reason),
            skipped(BYTES_NAME, BYTES_TARGET, 1.1, reason),
        ]
    if shutil.which("qemu-img") is None:
        return [skipped(TIME_NAME, TIME_TARGET, 1.0, "qemu-img is not installed")]
    with private_dir("convert") as tmp, make_loop_fs(tmp, "xfs", "16G") as mnt:
        with server(os.path.join(tmp, "state")) as (_proc, c):
            c.array_add("bench", "dir", os.path.join(mnt, "array"))
            c.container_create("bench", "1T", arrays=["bench"])
            path = c.vvol_create("bench", VVOL_SIZE, name="base")["path"]
            content = Content()
            changes = [fill(path, content)]
            points: list[str] = []
            for step in range(1, SNAPSHOTS + 1):
                points.append(c.vvol_snapshot("base", name=f"base@s{step}")["path"])
                changes.append(change(path, content, step))
            points.append(path)
            return _measure(c, points, changes, os.path.join(mnt, "out"), reps)


def _measure(c: Client, points: list[str], changes: list[int], out: str, reps: int) -> list[Result]:
    timing = Result(TIME_NAME, TIME_TARGET, 1.0)
    volume = Result(BYTES_NAME, BYTES_TARGET, 1.1)
    ours: list[float] = []
    theirs: list[float] = []
    for rep in range(reps):
        ours_dir, alt_dir = f"{out}-vvhost-{rep}", f"{out}-qemu-img-{rep}"
        drop_caches()
        seconds, layers = timed(partial(convert.cow_to_redo, c, "base", ours_dir))
        ours.append(seconds)
        os.mkdir(alt_dir)
        drop_caches()
        seconds, _ = timed(partial(qemu_chain, points, alt_dir))
        theirs.append(seconds)
        alt_files = [os.path.join(alt_dir, f"{i:02d}.qcow2") for i in range(1, len(points) + 1)]
        if rep == 0:
            same_points([layer.file for layer in layers], points, "vvhost chain")
            same_points(alt_files, points, "qemu-img chain")
            written = sum(layer.bytes_written for layer in layers)
            changed = sum(changes)
            volume.measured, volume.baseline = written / GiB, changed / GiB
            alt_bytes = sum(os.path.getsize(f) for f in alt_files)
            volume.notes.append(
                f"{BYTES_NAME}: vvhost wrote {written / MiB:.1f} MiB for {changed / MiB:.1f} MiB "
                f"of changes over {len(layers)} layers (bitmaps reported "
                f"{sum(x.changed_bytes for x in layers) / MiB:.1f} MiB); the qemu-img chain "
                f"is {alt_bytes / MiB:.1f} MiB; both chains compare equal to all points"
            )
        shutil.rmtree(ours_dir)
        shutil.rmtree(alt_dir)
        settle()
    timing.measured, timing.baseline = median(ours), median(theirs)
    timing.samples = {"vvhost": ours, "qemu-img": theirs}
    timing.notes.append(
        f"{TIME_NAME}: {reps} round(s), vvhost {min(ours):.2f}-{max(ours):.2f} s, "
        f"qemu-img convert per layer {min(theirs):.2f}-{max(theirs):.2f} s"
    )
    volume.notes.append(
        f"{BYTES_NAME}: the vvhost/alternative columns of this row are GiB, not seconds"
    )
    return [timing.finish(), volume.finish()]
