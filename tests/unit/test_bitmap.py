"""bitmap on the real filesystem under tmp_path (ext4 here), plus the FIEMAP sweep.

The diff cases start from a base with 32 chunks of data and holes after it::

    chunk  0 ........ 31 32 ................ 63
    base   |AAAAAAAAAAA|.......................|   4 MiB, 64 KiB chunks
    path   = copy of base, then known chunks rewritten (C = 64 KiB)
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from vvhost import bitmap, fsutil
from vvhost.fsutil import Extent

K = 1024
M = 1024 * K
C = bitmap.DEFAULT_CHUNK


def pattern(tag: int, n: int) -> bytes:
    return random.Random(tag).randbytes(n)


def make_sparse(path: Path, size: int, writes: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
        os.fsync(f.fileno())
    return path


def patch(path: Path, writes: list[tuple[int, bytes]], size: int | None = None) -> None:
    with open(path, "r+b") as f:
        if size is not None:
            f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
        os.fsync(f.fileno())


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_sparse(tmp_path / "base.raw", 4 * M, [(0, pattern(1, 32 * C))])


@pytest.fixture
def path(tmp_path: Path, base: Path) -> Path:
    if fsutil.supports_reflink(str(tmp_path)):
        pytest.skip("tmp_path shares extents here: the ext4 expectations do not apply")
    fsutil.sparse_copy(str(base), str(tmp_path / "path.raw"))
    return tmp_path / "path.raw"


def test_ranges_total() -> None:
    assert bitmap.ranges_total([]) == 0
    assert bitmap.ranges_total([(0, C), (5 * C, 3 * C)]) == 4 * C


def test_allocated_chunks_are_aligned_merged_and_clipped(tmp_path: Path) -> None:
    writes = [(100, b"a" * 100), (70000, b"b" * 70000), (M - 10, b"c" * 20)]
    f = make_sparse(tmp_path / "v.raw", M + 4 * K, writes)
    assert bitmap.allocated_chunks(str(f), C) == [(0, 3 * C), (15 * C, C + 4 * K)]
    assert bitmap.allocated_chunks(str(f), 4096) == [
        (0, 4 * K),
        (68 * K, 72 * K),
        (M - 4 * K, 8 * K),
    ]
    assert bitmap.allocated_chunks(str(make_sparse(tmp_path / "h", M, [])), C) == []


@pytest.mark.parametrize("chunk", [0, 1024, 3000, 65535, 96 * K])
def test_bad_chunk_sizes_are_refused(base: Path, chunk: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        bitmap.allocated_chunks(str(base), chunk)
    with pytest.raises(ValueError, match="power of two"):
        bitmap.diff_chunks(str(base), str(base), chunk)


def test_compare_finds_exactly_the_written_chunks(base: Path, path: Path) -> None:
    original = base.read_bytes()
    patch(
        path,
        [
            (3 * C, pattern(2, C)),  # whole chunk
            (5 * C + 777, b"\xff"),  # one byte
            (10 * C, pattern(3, 2 * C)),  # two chunks -> one range
            (20 * C, original[20 * C : 21 * C]),  # same bytes again: unchanged
            (40 * C + 5, b"new data in a hole"),  # data where base has a hole
            (50 * C, bytes(C)),  # zeros where base has a hole: unchanged
        ],
    )
    expected = [(3 * C, C), (5 * C, C), (10 * C, 2 * C), (40 * C, C)]
    for method in ("compare", None):
        result = bitmap.diff_chunks(str(path), str(base), method=method)
        assert result.method == "compare"  # ext4 shares no extents
        assert result.ranges == expected
        assert result.chunk == C
        assert result.total == 5 * C
    assert bitmap.diff_chunks(str(base), str(path), method="compare").ranges == expected
    assert bitmap.diff_chunks(str(base), str(base)).ranges == []


def test_compare_with_a_small_chunk(base: Path, path: Path) -> None:
    patch(path, [(3 * C + 4 * K, b"x" * (8 * K + 1))])
    result = bitmap.diff_chunks(str(path), str(base), 4096, method="compare")
    assert result.ranges == [(3 * C + 4 * K, 12 * K)]
    assert result.chunk == 4096


def test_grown_file_counts_only_the_tail_with_data(base: Path, path: Path) -> None:
    patch(path, [(5 * M + 3, b"tail")], size=6 * M + 100)
    assert bitmap.diff_chunks(str(path), str(base), method="compare").ranges == [(5 * M, C)]
    assert bitmap.diff_chunks(str(base), str(path), method="compare").ranges == [(5 * M, C)]


def test_shrunk_file_counts_the_lost_data(base: Path, path: Path) -> None:
    patch(path, [], size=M + 1000)  # base holds data up to 2 MiB
    expected = [(M, M)]
    assert bitmap.diff_chunks(str(path), str(base), method="compare").ranges == expected
    assert bitmap.diff_chunks(str(base), str(path), method="compare").ranges == expected


def test_fiemap_on_ext4_is_conservative(base: Path, path: Path) -> None:
    patch(path, [(3 * C, pattern(2, C))])
    result = bitmap.diff_chunks(str(path), str(base), method="fiemap")
    assert result.method == "fiemap"
    assert result.ranges == [(0, 32 * C)]  # no shared extents: all data "changed"


def test_unknown_method_and_fiemap_across_filesystems(base: Path) -> None:
    with pytest.raises(ValueError, match="unknown diff method"):
        bitmap.diff_chunks(str(base), str(base), method="magic")
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(base).st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        copy = shutil.copy(base, other)
        with pytest.raises(ValueError, match="same filesystem"):
            bitmap.diff_chunks(copy, str(base), method="fiemap")
        assert bitmap.diff_chunks(copy, str(base)).method == "compare"


def ext(logical: int, physical: int, length: int, flags: int = 0) -> Extent:
    return Extent(logical, physical, length, flags)


def test_fiemap_sweep_rules() -> None:
    """Same physical place or zeros on both sides: unchanged; else changed."""
    s, u, enc = fsutil.SHARED, fsutil.UNWRITTEN, 0x8 | fsutil.SHARED
    a = [
        ext(0, 1000 * C, 4 * C, s),  # shared with b for chunks 0-1, moved in 2-3
        ext(4 * C, 9000 * C, C, u),  # unwritten vs hole: unchanged
        ext(6 * C, 7000 * C, C, u),  # unwritten vs data: changed
        ext(8 * C, 5000 * C, C, enc),  # same physical but encoded: changed
        ext(10 * C, 6000 * C, C),  # data vs hole: changed
    ]
    b = [
        ext(0, 1000 * C, 2 * C, s),
        ext(2 * C, 3000 * C, 2 * C),
        ext(6 * C, 8000 * C, C),
        ext(8 * C, 5000 * C, C, enc),
    ]
    expected = [(2 * C, 2 * C), (6 * C, C), (8 * C, C), (10 * C, C)]
    spans = bitmap._fiemap_spans(a, b, 12 * C)
    assert bitmap._to_ranges(bitmap._align(spans, C, 12 * C)) == expected
    spans = bitmap._fiemap_spans(b, a, 12 * C)
    assert bitmap._to_ranges(bitmap._align(spans, C, 12 * C)) == expected
    assert bitmap._fiemap_spans(a, a, 12 * C) == [(8 * C, 9 * C)]  # encoded never trusted
