"""Byte ranges as (offset, length) pairs: merging, chunk alignment, intersection.

    input  (0,10) (5,10) (40,1)           chunk 16, limit 45
    merge  (0,15) (40,1)
    align  (0,16) (32,13)                 every range widened to whole chunks, cut at limit

Ranges from librbd may overlap or touch; every function here accepts that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

Ranges = list[tuple[int, int]]


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sorted, with overlapping and touching ranges joined and empty ones dropped."""
    out: Ranges = []
    for offset, length in sorted(r for r in ranges if r[1] > 0):
        if out and offset <= out[-1][0] + out[-1][1]:
            start, prev = out[-1]
            out[-1] = (start, max(prev, offset + length - start))
        else:
            out.append((offset, length))
    return out


def align(ranges: Iterable[tuple[int, int]], chunk: int, limit: int) -> Ranges:
    """Widen every range to whole ``chunk``s, clip at ``limit``, merge."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, not {chunk}")
    out = []
    for offset, length in ranges:
        start = offset // chunk * chunk
        end = min(-(-(offset + length) // chunk) * chunk, limit)
        if end > start:
            out.append((start, end - start))
    return merge(out)


def intersect(a: Iterable[tuple[int, int]], b: Iterable[tuple[int, int]]) -> Ranges:
    left, right = merge(a), merge(b)
    out: Ranges = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i][0], right[j][0])
        end = min(left[i][0] + left[i][1], right[j][0] + right[j][1])
        if end > start:
            out.append((start, end - start))
        if left[i][0] + left[i][1] < right[j][0] + right[j][1]:
            i += 1
        else:
            j += 1
    return out


def total(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(length for _, length in merge(ranges))


def blocks(ranges: Iterable[tuple[int, int]], block: int) -> Iterator[tuple[int, int]]:
    """Each range cut into pieces of at most ``block`` bytes."""
    for offset, length in merge(ranges):
        end = offset + length
        while offset < end:
            step = min(block, end - offset)
            yield offset, step
            offset += step
