"""Chunk bitmaps of volume files.

A volume is cut into fixed chunks (``DEFAULT_CHUNK`` = 64 KiB).  Results are
lists of ``(offset, length)`` byte ranges, merged and aligned to the chunk
(only the last one may stop short, at the end of the file)::

    chunk      0      1      2      3      4      5
    file    |dd    |      |   ddd|dd    |      |d   |EOF
    alloc   [------)      [-------------)      [----)
            -> [(0, 64K), (128K, 128K), (320K, <tail>)]

``diff_chunks(path, base)`` names the chunks whose content may differ::

    base    |AAAA  |      |BBBB  |CCCC  |
    path    |AAAA  |      |BBBB  |XXXX  |      |EEEE  |
                                  ^^^^^^        ^^^^^^  -> [(192K, 64K), (320K, 64K)]

Two ways to find them:

* ``fiemap``: no data is read.  Reflink clones (XFS, btrfs) share extents, so
  a range both files map to the same physical block is unchanged; so is a
  range that is a hole or unwritten in both.  Anything else is reported
  changed (conservative: rewriting identical bytes still counts).
* ``compare``: read both files window by window, skipping what is a hole in
  both, and compare the bytes (exact, works everywhere, e.g. ext4).

Past the end of the shorter file, a chunk counts as changed where the longer
file has data.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import fsutil
from .fsutil import UNRELIABLE, UNWRITTEN, Extent

DEFAULT_CHUNK = 65536
_WINDOW = 4 * 1024 * 1024  # bytes read per file and step when comparing

Span = tuple[int, int]  # (start, end), internal


@dataclass
class DiffResult:
    """Chunks of ``path`` that may differ from ``base``."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    method: str = "compare"
    chunk: int = DEFAULT_CHUNK

    @property
    def total(self) -> int:
        return ranges_total(self.ranges)


def ranges_total(ranges: Iterable[tuple[int, int]]) -> int:
    """Sum of the lengths of ``(offset, length)`` ranges."""
    return sum(length for _, length in ranges)


def _check_chunk(chunk: int) -> None:
    if chunk < 4096 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 4096, not {chunk}")


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Sort ``(start, end)`` spans and join those that overlap or touch."""
    out: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _align(spans: Iterable[Span], chunk: int, limit: int) -> list[Span]:
    """Widen spans to whole chunks (clipped to ``limit``) and merge them."""
    mask = chunk - 1
    return _merge((s & ~mask, min((e + mask) & ~mask, limit)) for s, e in spans)


def _to_ranges(spans: Iterable[Span]) -> list[tuple[int, int]]:
    return [(s, e - s) for s, e in spans]


def _data_spans(path: str) -> list[Span]:
    return [(o, o + n) for o, n in fsutil.data_segments(path)]


def allocated_chunks(path: str, chunk: int = DEFAULT_CHUNK) -> list[tuple[int, int]]:
    """Chunk-aligned ranges covering every chunk of ``path`` that holds data."""
    _check_chunk(chunk)
    return _to_ranges(_align(_data_spans(path), chunk, os.path.getsize(path)))


def _tail_spans(path: str, base: str, shorter: int) -> list[Span]:
    """Data of the longer file past the end of the shorter one."""
    longer = path if os.path.getsize(path) > shorter else base
    return [(max(s, shorter), e) for s, e in _data_spans(longer) if e > shorter]


def _reads_zero(e: Extent | None) -> bool:
    return e is None or bool(e.flags & UNWRITTEN)


def _differs(a: Extent | None, b: Extent | None) -> bool:
    """Whether two mappings of the same logical range may hold different data."""
    if a is None or b is None or (a.flags | b.flags) & UNWRITTEN:
        return _reads_zero(a) != _reads_zero(b)
    if (a.flags | b.flags) & UNRELIABLE:
        return True
    return a.physical - a.logical != b.physical - b.logical


def _clip(extents: list[Extent], size: int) -> list[Extent]:
    """Drop what lies past ``size`` (beyond EOF reads nothing, like a hole)."""
    out = []
    for e in extents:
        if e.logical < size:
            length = min(e.length, size - e.logical)
            out.append(Extent(e.logical, e.physical, length, e.flags))
    return out


def _fiemap_spans(a: list[Extent], b: list[Extent], limit: int) -> list[Span]:
    """Sweep both extent lists together and return the spans that differ.

    Between two neighbouring extent boundaries (of either file) each file
    maps at most one extent, so one comparison decides the whole span.
    """
    cuts = sorted({0, limit, *(x for e in a + b for x in (e.logical, e.end) if x < limit)})
    changed: list[Span] = []
    i = j = 0
    for start, end in itertools.pairwise(cuts):
        while i < len(a) and a[i].end <= start:
            i += 1
        while j < len(b) and b[j].end <= start:
            j += 1
        ea = a[i] if i < len(a) and a[i].logical <= start else None
        eb = b[j] if j < len(b) and b[j].logical <= start else None
        if _differs(ea, eb):
            changed.append((start, end))
    return changed


def _compare_spans(path: str, base: str, candidates: list[Span], chunk: int) -> list[Span]:
    """Read ``candidates`` (chunk-aligned) of both files; return differing chunks."""
    changed: list[Span] = []
    window = max(chunk, _WINDOW)
    with open(path, "rb", buffering=0) as fp, open(base, "rb", buffering=0) as fb:
        for start, end in candidates:
            for off in range(start, end, window):
                n = min(window, end - off)
                a, b = os.pread(fp.fileno(), n, off), os.pread(fb.fileno(), n, off)
                if a == b:
                    continue
                for c in range(0, n, chunk):
                    x, y = a[c : c + chunk], b[c : c + chunk]
                    if x.ljust(len(y), b"\0") != y.ljust(len(x), b"\0"):
                        changed.append((off + c, off + c + chunk))
    return changed


def _compare_diff(path: str, base: str, chunk: int, shorter: int, limit: int) -> list[Span]:
    """Compare the chunks where either file has data; add the longer file's tail."""
    union = _merge(_data_spans(path) + _data_spans(base))
    candidates = _align([(s, min(e, shorter)) for s, e in union], chunk, limit)
    return _compare_spans(path, base, candidates, chunk) + _tail_spans(path, base, shorter)


def _fiemap_usable(path: str, base: str) -> bool:
    return os.stat(path).st_dev == os.stat(base).st_dev and all(
        fsutil.fiemap_supported(p) for p in (path, base)
    )


def diff_chunks(
    path: str, base: str, chunk: int = DEFAULT_CHUNK, method: str | None = None
) -> DiffResult:
    """Chunks whose content in ``path`` may differ from ``base``.

    ``method`` is ``"fiemap"``, ``"compare"`` or ``None``: pick ``fiemap`` when
    both files sit on one filesystem with FIEMAP and at least one of them has
    a shared extent (a sign of a reflink relation; without one FIEMAP could
    only call every data chunk changed), else ``compare``.
    """
    _check_chunk(chunk)
    if method not in (None, "fiemap", "compare"):
        raise ValueError(f"unknown diff method {method!r}")
    size_p, size_b = os.path.getsize(path), os.path.getsize(base)
    limit, shorter = max(size_p, size_b), min(size_p, size_b)
    ext_p: list[Extent] = []
    ext_b: list[Extent] = []
    if method == "fiemap" and os.stat(path).st_dev != os.stat(base).st_dev:
        raise ValueError("fiemap diff needs both files on the same filesystem")
    if method == "fiemap" or (method is None and _fiemap_usable(path, base)):
        ext_p, ext_b = _clip(fsutil.fiemap(path), size_p), _clip(fsutil.fiemap(base), size_b)
        if method is None and any(e.flags & fsutil.SHARED for e in ext_p + ext_b):
            method = "fiemap"
    if method == "fiemap":
        spans = _fiemap_spans(ext_p, ext_b, limit)
    else:
        method, spans = "compare", _compare_diff(path, base, chunk, shorter, limit)
    return DiffResult(_to_ranges(_align(spans, chunk, limit)), method, chunk)
