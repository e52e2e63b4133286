"""fsutil and bitmap on a loop-mounted XFS (reflink=1), and btrfs for the diff.

One 1 GiB volume of known data is written once per module and cloned::

    orig.raw   |M0|M1|M2| ... |M1023|      every MiB a distinct seeded pattern
    clone.raw  = FICLONE(orig): same extents, FIEMAP flags SHARED on both
               then chunks rewritten -> new extents only for those chunks
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fsfixtures import loop_capability, make_loop_fs
from vvhost import bitmap, fsutil

K = 1024
M = 1024 * K
C = bitmap.DEFAULT_CHUNK
SIZE = 1024 * M


def pattern(tag: int, n: int) -> bytes:
    return random.Random(tag).randbytes(n)


def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * M), b""):
            h.update(block)
    return h.hexdigest()


def mount(tmp_path_factory: pytest.TempPathFactory, fstype: str) -> Iterator[str]:
    reason = loop_capability(fstype)
    if reason:
        pytest.skip(reason)
    with make_loop_fs(str(tmp_path_factory.mktemp(fstype)), fstype, "3G") as mnt:
        yield mnt


@pytest.fixture(scope="module")
def xfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from mount(tmp_path_factory, "xfs")


@pytest.fixture(scope="module")
def btrfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from mount(tmp_path_factory, "btrfs")


@pytest.fixture
def xdir(xfs_dir: str) -> str:
    return tempfile.mkdtemp(dir=xfs_dir)


@pytest.fixture(scope="module")
def orig(xfs_dir: str) -> tuple[str, str]:
    """The 1 GiB volume and its sha256."""
    path = os.path.join(xfs_dir, "orig.raw")
    block = bytearray(pattern(0, M))
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(SIZE // M):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
            h.update(block)
        os.fsync(f.fileno())
    return path, h.hexdigest()


def write_at(path: str, writes: list[tuple[int, bytes]]) -> None:
    with open(path, "r+b") as f:
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
        os.fsync(f.fileno())


def test_supports_reflink_only_on_xfs(tmp_path: Path, xdir: str) -> None:
    assert fsutil.supports_reflink(str(tmp_path)) is False
    assert fsutil.supports_reflink(xdir) is True
    assert os.listdir(tmp_path) == []
    assert os.listdir(xdir) == []


def test_reflink_of_1gib_is_instant_and_shares_extents(orig: tuple[str, str], xdir: str) -> None:
    src, digest = orig
    clone = os.path.join(xdir, "clone.raw")
    free = os.statvfs(xdir).f_bfree * os.statvfs(xdir).f_frsize
    started = time.monotonic()
    fsutil.reflink(src, clone)
    elapsed = time.monotonic() - started
    used = free - os.statvfs(xdir).f_bfree * os.statvfs(xdir).f_frsize
    assert elapsed < 2.0
    assert used < 16 * M  # nothing was copied
    assert os.path.getsize(clone) == SIZE
    assert sha(clone) == digest
    a, b = fsutil.fiemap(src), fsutil.fiemap(clone)
    assert [(e.logical, e.physical, e.length) for e in a] == [
        (e.logical, e.physical, e.length) for e in b
    ]
    assert all(e.flags & fsutil.SHARED for e in a + b)
    assert sum(e.length for e in b) == SIZE
    assert fsutil.clone_or_copy(src, os.path.join(xdir, "again.raw")) == "reflink"


def test_diff_after_writes_into_a_clone(orig: tuple[str, str], xdir: str) -> None:
    src, digest = orig
    clone = os.path.join(xdir, "clone.raw")
    fsutil.reflink(src, clone)
    chunks = [0, 1, 2, 100, 4095, 8000, 8001, 16383]
    writes = [(i * C, pattern(100 + i, C)) for i in chunks]
    write_at(clone, [*writes, (5000 * C + 8 * K, pattern(7, 4 * K))])
    expected = [
        (0, 3 * C),
        (100 * C, C),
        (4095 * C, C),
        (5000 * C, C),
        (8000 * C, 2 * C),
        (16383 * C, C),
    ]

    started = time.monotonic()
    fast = bitmap.diff_chunks(clone, src, method="fiemap")
    fiemap_seconds = time.monotonic() - started
    assert (fast.method, fast.ranges) == ("fiemap", expected)
    assert bitmap.diff_chunks(clone, src) == fast  # auto picks fiemap
    slow = bitmap.diff_chunks(clone, src, method="compare")
    assert (slow.method, slow.ranges) == ("compare", expected)
    assert fiemap_seconds < 1.0

    new = fsutil.fiemap(clone)
    assert not any(e.flags & fsutil.SHARED for e in new if e.logical == 100 * C)
    with open(clone, "rb") as f:
        for offset, data in writes:
            f.seek(offset)
            assert hashlib.sha256(f.read(C)).digest() == hashlib.sha256(data).digest()
    assert sha(src) == digest  # copy-on-write left the original alone

    # replay the diff onto another clone of the original: same content
    target = os.path.join(xdir, "target.raw")
    fsutil.reflink(src, target)
    assert fsutil.write_ranges(clone, target, fast.ranges) == bitmap.ranges_total(fast.ranges)
    assert sha(target) == sha(clone)
    assert bitmap.diff_chunks(target, clone, method="compare").ranges == []


def sparse_case(directory: str) -> tuple[str, str, list[tuple[int, int]]]:
    """Data, holes and an unwritten (fallocated) region, cloned and changed."""
    orig = os.path.join(directory, "sparse.raw")
    with open(orig, "wb") as f:
        f.truncate(64 * M)
        os.posix_fallocate(f.fileno(), 32 * M, 8 * M)  # unwritten: reads zeros
        for i in range(16):
            f.seek(i * M)
            f.write(pattern(200 + i, 256 * K))
        os.fsync(f.fileno())
    clone = os.path.join(directory, "sparse-clone.raw")
    fsutil.reflink(orig, clone)
    write_at(clone, [(20 * M, pattern(300, C)), (33 * M, pattern(301, 2 * C)), (3 * M, b"z")])
    with open(clone, "r+b") as f:  # punch chunk 1 of MiB 5: data in orig, hole in clone
        assert fsutil._punch_hole(f.fileno(), 5 * M + C, C) == 0
    expected = [(3 * M, C), (5 * M + C, C), (20 * M, C), (33 * M, 2 * C)]
    return orig, clone, expected


def test_diff_with_holes_and_unwritten_extents_on_xfs(xdir: str) -> None:
    orig, clone, expected = sparse_case(xdir)
    # first: XFS SEEK_DATA calls an unwritten extent "data" once its (zero)
    # pages are in the page cache, which the compare below would cause
    assert bitmap.allocated_chunks(orig, C) == [(i * M, 4 * C) for i in range(16)]
    assert bitmap.diff_chunks(clone, orig, method="fiemap").ranges == expected
    assert bitmap.diff_chunks(clone, orig, method="compare").ranges == expected


def test_diff_on_btrfs(btrfs_dir: str) -> None:
    assert fsutil.supports_reflink(btrfs_dir)
    orig, clone, expected = sparse_case(btrfs_dir)
    result = bitmap.diff_chunks(clone, orig)
    assert (result.method, result.ranges) == ("fiemap", expected)
    assert bitmap.diff_chunks(clone, orig, method="compare").ranges == expected
