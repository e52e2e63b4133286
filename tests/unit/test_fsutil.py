"""fsutil on the real filesystem under tmp_path (ext4 here: no reflink).

Test files are sparse and filled with known, seeded byte patterns::

    |AAAA|....|BB..|....|CCCC|....|   A, B, C = pattern(tag)   . = hole
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from pathlib import Path

import pytest

from vvhost import fsutil

K = 1024
M = 1024 * K


def pattern(tag: int, n: int) -> bytes:
    return random.Random(tag).randbytes(n)


def sha(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(M), b""):
            h.update(block)
    return h.hexdigest()


def make_sparse(path: Path, size: int, writes: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
        os.fsync(f.fileno())
    return path


def require_no_reflink(directory: Path) -> None:
    if fsutil.supports_reflink(str(directory)):
        pytest.skip("tmp_path shares extents here: the ext4 expectations do not apply")


LAYOUT = [(0, pattern(1, 64 * K)), (M, pattern(2, 4 * K)), (2 * M + 64 * K, pattern(3, 128 * K))]


def test_data_segments_and_allocated_bytes(tmp_path: Path) -> None:
    f = make_sparse(tmp_path / "v.raw", 4 * M, LAYOUT)
    assert fsutil.data_segments(str(f)) == [(0, 64 * K), (M, 4 * K), (2 * M + 64 * K, 128 * K)]
    assert 196 * K <= fsutil.allocated_bytes(str(f)) < 256 * K


def test_data_segments_of_empty_and_all_hole_files(tmp_path: Path) -> None:
    empty = make_sparse(tmp_path / "e", 0, [])
    holes = make_sparse(tmp_path / "h", 8 * M, [])
    assert fsutil.data_segments(str(empty)) == []
    assert fsutil.data_segments(str(holes)) == []
    assert fsutil.allocated_bytes(str(holes)) == 0


def test_sparse_copy_keeps_holes_and_content(tmp_path: Path) -> None:
    writes = [(i * 4 * M, pattern(i, 100 * K)) for i in range(16)]
    src = make_sparse(tmp_path / "src", 64 * M + 123, writes)
    calls: list[tuple[int, int]] = []
    copied = fsutil.sparse_copy(str(src), str(tmp_path / "dst"), lambda d, t: calls.append((d, t)))
    dst = tmp_path / "dst"
    assert copied == sum(len(d) for _, d in writes)
    assert calls
    assert calls[-1] == (copied, copied)
    assert os.path.getsize(dst) == 64 * M + 123
    assert sha(dst) == sha(src)
    assert fsutil.data_segments(str(dst)) == fsutil.data_segments(str(src))
    assert fsutil.allocated_bytes(str(dst)) <= fsutil.allocated_bytes(str(src)) + 64 * K


def test_sparse_copy_replaces_a_longer_destination(tmp_path: Path) -> None:
    src = make_sparse(tmp_path / "src", 2 * M, LAYOUT[:2])
    dst = make_sparse(tmp_path / "dst", 8 * M, [(0, pattern(9, 8 * M))])
    fsutil.sparse_copy(str(src), str(dst))
    assert os.path.getsize(dst) == 2 * M
    assert sha(dst) == sha(src)
    assert fsutil.allocated_bytes(str(dst)) < 128 * K


def test_sparse_copy_falls_back_to_read_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def refuse(*args: object) -> int:
        calls.append(args)
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    src = make_sparse(tmp_path / "src", 4 * M, LAYOUT)
    assert fsutil.sparse_copy(str(src), str(tmp_path / "dst")) == 196 * K
    assert len(calls) == 1  # tried once, then read/write for the rest
    assert sha(tmp_path / "dst") == sha(src)
    assert fsutil.data_segments(str(tmp_path / "dst")) == fsutil.data_segments(str(src))


def test_copy_onto_itself_is_refused(tmp_path: Path) -> None:
    src = make_sparse(tmp_path / "src", M, LAYOUT[:1])
    with pytest.raises(ValueError, match="same file"):
        fsutil.sparse_copy(str(src), str(src))
    with pytest.raises(ValueError, match="same file"):
        fsutil.reflink(str(src), str(src))
    assert sha(src) == hashlib.sha256(LAYOUT[0][1] + bytes(M - 64 * K)).hexdigest()


def test_reflink_is_refused_on_ext4(tmp_path: Path) -> None:
    require_no_reflink(tmp_path)
    src = make_sparse(tmp_path / "src", M, LAYOUT[:1])
    with pytest.raises(fsutil.ReflinkUnsupported) as info:
        fsutil.reflink(str(src), str(tmp_path / "dst"))
    assert isinstance(info.value, OSError)
    assert info.value.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY)
    assert not (tmp_path / "dst").exists()
    assert fsutil.supports_reflink(str(tmp_path)) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_clone_or_copy_copies_on_ext4(tmp_path: Path) -> None:
    require_no_reflink(tmp_path)
    src = make_sparse(tmp_path / "src", 4 * M, LAYOUT)
    calls: list[tuple[int, int]] = []
    how = fsutil.clone_or_copy(str(src), str(tmp_path / "dst"), lambda d, t: calls.append((d, t)))
    assert how == "copy"
    assert calls[-1] == (196 * K, 196 * K)
    assert sha(tmp_path / "dst") == sha(src)


def test_fiemap_lists_the_data_extents(tmp_path: Path) -> None:
    f = make_sparse(tmp_path / "v.raw", 4 * M, LAYOUT)
    assert fsutil.fiemap_supported(str(f))
    extents = fsutil.fiemap(str(f))
    assert [(e.logical, e.length) for e in extents] == fsutil.data_segments(str(f))
    assert extents[-1].flags & fsutil.LAST
    assert not any(e.flags & (fsutil.SHARED | fsutil.DELALLOC) for e in extents)
    assert all(e.physical > 0 for e in extents)
    assert fsutil.fiemap(str(make_sparse(tmp_path / "e", M, []))) == []


def _expected_after_patch(base: bytes, src: bytes, ranges: list[tuple[int, int]]) -> bytes:
    out = bytearray(base)
    for offset, length in ranges:
        out[offset : offset + length] = src[offset : offset + length]
    return bytes(out)


def _patch_case(tmp_path: Path) -> tuple[Path, Path, list[tuple[int, int]], bytes]:
    c = 64 * K
    base = pattern(10, 16 * c)
    dst = make_sparse(tmp_path / "dst", 16 * c, [(0, base)])
    src = make_sparse(
        tmp_path / "src", 16 * c, [(2 * c, pattern(11, 2 * c)), (7 * c, pattern(12, c))]
    )
    ranges = [(2 * c, 2 * c), (7 * c, c), (10 * c, c), (12 * c + 4 * K, 8 * K)]
    expected = _expected_after_patch(base, src.read_bytes(), ranges)
    return src, dst, ranges, expected


def test_write_ranges_copies_data_and_punches_holes(tmp_path: Path) -> None:
    src, dst, ranges, expected = _patch_case(tmp_path)
    before = fsutil.allocated_bytes(str(dst))
    written = fsutil.write_ranges(str(src), str(dst), ranges)
    assert written == 3 * 64 * K
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert os.path.getsize(dst) == 16 * 64 * K
    holes = [(10 * 64 * K, 64 * K), (12 * 64 * K + 4 * K, 8 * K)]
    segments = fsutil.data_segments(str(dst))
    for offset, length in holes:
        assert not any(o < offset + length and offset < o + n for o, n in segments)
    assert fsutil.allocated_bytes(str(dst)) == before - 72 * K


def test_write_ranges_writes_zeros_without_hole_punching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsutil, "_punch_hole", lambda fd, off, n: errno.EOPNOTSUPP)
    src, dst, ranges, expected = _patch_case(tmp_path)
    before = fsutil.allocated_bytes(str(dst))
    assert fsutil.write_ranges(str(src), str(dst), ranges) == 3 * 64 * K
    assert dst.read_bytes() == expected
    assert fsutil.allocated_bytes(str(dst)) == before


def test_write_ranges_grows_a_shorter_destination(tmp_path: Path) -> None:
    data = pattern(20, 64 * K)
    src = make_sparse(tmp_path / "src", 2 * M, [(M, data)])
    dst = make_sparse(tmp_path / "dst", 512 * K, [(0, pattern(21, 512 * K))])
    progress: list[tuple[int, int]] = []
    written = fsutil.write_ranges(
        str(src), str(dst), [(M, M)], lambda d, t: progress.append((d, t))
    )
    assert written == 64 * K
    assert progress[-1] == (64 * K, 64 * K)
    assert os.path.getsize(dst) == 2 * M
    assert dst.read_bytes() == pattern(21, 512 * K) + bytes(512 * K) + data + bytes(M - 64 * K)
