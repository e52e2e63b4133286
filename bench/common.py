"""Shared helpers: results, timing, page-cache dropping, test data and checks.

Every benchmark times vvhost and an obvious alternative in the same run, on
the same files, with the page cache dropped the same way before each timed
call, and reports the median of a few repetitions.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from vvhost.client import Client
from vvhost.daemon import ServerProcess

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
BLOCK = 4 * MiB  # unit of the synthetic data written into volumes
SETTLE = 1.5  # seconds to wait after deleting a big file
WORK_ROOT = "/var/tmp"  # ext4 here; loop images and server state live below it

T = TypeVar("T")


class VerifyError(RuntimeError):
    """A benchmark's data check failed: its timings mean nothing."""


@dataclass
class Result:
    """One row of the table: ``measured`` against ``baseline`` (seconds)."""

    name: str
    target: str  # human text, e.g. "ratio <= 0.05"
    limit: float  # the ratio must be at most this
    measured: float | None = None  # vvhost (or: the big catalog)
    baseline: float | None = None  # the alternative (or: the small catalog)
    status: str = ""  # PASS, MISS, SKIP or ERROR
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.baseline:
            return None
        return self.measured / self.baseline

    def finish(self) -> Result:
        ratio = self.ratio
        if not self.status:
            self.status = "PASS" if ratio is not None and ratio <= self.limit else "MISS"
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def skipped(name: str, target: str, limit: float, reason: str) -> Result:
    return Result(name, target, limit, status="SKIP", notes=[f"skipped: {reason}"])


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Run ``fn`` once; return (wall seconds, its result)."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def drop_caches() -> bool:
    """Flush dirty data and drop the page cache (root only); False if not possible."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError:
        return False
    return True


def settle(seconds: float = SETTLE) -> None:
    """After freeing a big file: flush, then give the disk time for the discards
    (``/`` is mounted with ``discard``; without a pause the next big write runs up
    to 2.5x slower, hitting whichever side comes next)."""
    os.sync()
    time.sleep(seconds)


def run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def fstype(path: str) -> str:
    return run("df", "--output=fstype", path).split()[-1]


def real_copy(src: str, dst: str) -> None:
    """The alternative to a snapshot: a full, durable, sparse copy that never reflinks."""
    run("cp", "--sparse=always", "--reflink=never", src, dst)
    run("sync", dst)  # vvhost fsyncs its copies; make the alternative as durable


def shared_extents(path: str) -> int:
    """How many extents of ``path`` FIEMAP flags as shared with another file."""
    out = run("filefrag", "-v", path)
    return sum(1 for line in out.splitlines() if "shared" in line.split(":")[-1])


def pattern(seed: int, size: int = 64 * KiB) -> bytes:
    """A non-zero pseudo-random pattern (no zero bytes, so no accidental holes)."""
    raw = random.Random(seed).randbytes(size)
    return raw.replace(b"\0", b"\x01")


def fill_block(seed: int, stamp: int, size: int = BLOCK) -> bytes:
    """``size`` bytes of the repeated pattern, stamped with ``stamp`` at the start."""
    unit = pattern(seed)
    body = (unit * (size // len(unit) + 1))[:size]
    return stamp.to_bytes(8, "little") + body[8:]


def write_spread(path: str, total: int, seed: int, offset: int = 0) -> list[int]:
    """Write ``total`` bytes as 4 MiB blocks spread evenly over the file, fsync;
    return the block offsets.  ``offset`` shifts every block (to rewrite elsewhere)."""
    size = os.path.getsize(path)
    count = total // BLOCK
    stride = size // count
    offsets = [i * stride + offset for i in range(count)]
    fd = os.open(path, os.O_WRONLY)
    try:
        for i, off in enumerate(offsets):
            os.pwrite(fd, fill_block(seed, i + 1), off)
        os.fsync(fd)
    finally:
        os.close(fd)
    return offsets


def data_runs(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the data (non-hole) runs of ``fd``."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        pos = end


def content_digest(path: str) -> str:
    """sha256 of the logical content: size plus every non-zero 1 MiB block with its
    offset.  Equal for two files exactly when they read the same, holes or not."""
    h = hashlib.sha256()
    zero = bytes(MiB)
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        h.update(size.to_bytes(8, "little"))
        done = 0
        for start, length in data_runs(fd, size):
            off = max(start - start % MiB, done)
            while off < start + length:
                buf = os.pread(fd, MiB, off)
                if buf != zero[: len(buf)]:
                    h.update(off.to_bytes(8, "little"))
                    h.update(buf)
                off += MiB
            done = off
    return h.hexdigest()


def timed_convert(sources: dict[str, str], scratch: str) -> float:
    """The obvious full copy: ``qemu-img convert`` of every source (raw) into
    ``scratch``, after dropping the page cache; returns the seconds; the copies go."""
    drop_caches()
    t0 = time.perf_counter()
    for key, src in sources.items():
        dst = os.path.join(scratch, f"copy-{key}.raw")
        subprocess.run(["qemu-img", "convert", "-O", "raw", src, dst], check=True)
    seconds = time.perf_counter() - t0
    for key in sources:
        os.unlink(os.path.join(scratch, f"copy-{key}.raw"))
    return seconds


def check(ok: bool, message: str) -> None:
    if not ok:
        raise VerifyError(message)


@contextmanager
def private_dir(prefix: str, root: str = WORK_ROOT) -> Iterator[str]:
    """A fresh directory, removed afterwards."""
    path = tempfile.mkdtemp(prefix=f"vvhost-bench-{prefix}-", dir=root)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def server(state_dir: str, private_tgtd: bool = False) -> Iterator[tuple[ServerProcess, Client]]:
    """A private ``vvhost serve`` and a client; stopped (by its PID) afterwards."""
    proc = ServerProcess(state_dir, private_tgtd=private_tgtd)
    proc.start()
    client = proc.client()
    try:
        yield proc, client
    finally:
        client.close()
        proc.stop()


def leftovers(marker: str = "vvhost-bench-") -> list[str]:
    """Mounts or loop devices still referring to a benchmark directory."""
    with open("/proc/mounts") as fh:
        found = [line.strip() for line in fh if marker in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False)
    return found + [line for line in loops.stdout.splitlines() if marker in line]
