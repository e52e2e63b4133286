"""Changed ranges and space figures of RBD points, from ``diff_iterate`` (fast-diff).

A point is an image at its head or at one snapshot.  Two points on one image
differ where the later one changed since the earlier.  Points on different
images are related through clone parents (linked clones, reverts):

    A (image a, head) ─parent─▶ image p @ s ─ ... ─▶ B (image p, snap t)

    changed(A, B) = what a wrote itself (include_parent=False)
                  ∪ changed(p @ s, B)                           (same image: one diff)

Points with no common image are compared by allocation (a superset: what
either holds).  Nothing here reads data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import rbd

from . import rbdranges
from .base import Space
from .rbdconn import Cluster
from .rbdflatten import parent_of
from .rbdio import extents

HEAD = 1 << 64  # sorts after every snapshot id
MAX_WALK = 64


@dataclass(frozen=True)
class Point:
    ns: str
    image_id: str
    snap: str | None = None  # None: the head


@contextlib.contextmanager
def opened(cluster: Cluster, point: Point) -> Iterator[Any]:
    """The image at the point, read-only.  Opened at its head and then set to the
    snapshot: librbd 16.2 opening by id straight at a snapshot crashed the process
    now and then (seen here, under repeated opens)."""
    with cluster.ioctx(point.ns) as io:
        with rbd.Image(io, image_id=point.image_id, read_only=True) as img:
            if point.snap is not None:
                img.set_snap(point.snap)
            yield img


def user_snaps(image: Any) -> list[tuple[int, str]]:
    """(id, name) of the image's own snapshots, oldest first (trash ones left out)."""
    snaps = [
        (int(s["id"]), str(s["name"]))
        for s in image.list_snaps()
        if s.get("namespace", rbd.RBD_SNAP_NAMESPACE_TYPE_USER) == rbd.RBD_SNAP_NAMESPACE_TYPE_USER
    ]
    return sorted(snaps)


def _snap_order(image: Any, snap: str | None) -> int:
    return HEAD if snap is None else int(image.snap_get_id(snap))


def same_image(cluster: Cluster, a: Point, b: Point, whole_object: bool) -> rbdranges.Ranges:
    """Ranges that differ between two points of one image."""
    with opened(cluster, Point(a.ns, a.image_id)) as img:
        order = sorted([(_snap_order(img, a.snap), a.snap), (_snap_order(img, b.snap), b.snap)])
    (first, early), (last, late) = order
    if first == last:
        return []
    assert early is not None  # only the later point can be the head
    with opened(cluster, Point(a.ns, a.image_id, late)) as img:
        return extents(img, early, True, whole_object)


def own(cluster: Cluster, point: Point, whole_object: bool) -> rbdranges.Ranges:
    """What the point's image holds itself (not read through a parent)."""
    with opened(cluster, point) as img:
        return extents(img, None, False, whole_object)


def allocated(cluster: Cluster, point: Point, whole_object: bool) -> rbdranges.Ranges:
    with opened(cluster, point) as img:
        return extents(img, None, True, whole_object)


def _walk(cluster: Cluster, a: Point, b: Point, whole_object: bool) -> rbdranges.Ranges | None:
    found: list[tuple[int, int]] = []
    cur = a
    for _ in range(MAX_WALK):
        if cur.image_id == b.image_id:
            return rbdranges.merge([*found, *same_image(cluster, cur, b, whole_object)])
        with opened(cluster, cur) as img:
            parent = parent_of(img)
            if parent is None:
                return None
            found += extents(img, None, False, whole_object)
        cur = Point(*parent)
    return None


def changed(
    cluster: Cluster, a: Point, b: Point | None, whole_object: bool
) -> tuple[rbdranges.Ranges, str]:
    if b is None:
        return allocated(cluster, a, whole_object), "fast-diff"
    for x, y in ((a, b), (b, a)):
        try:
            ranges = _walk(cluster, x, y, whole_object)
        except (rbd.ImageNotFound, rbd.InvalidArgument):
            ranges = None  # a parent cut point in the trash namespace cannot be diffed from
        if ranges is not None:
            return ranges, "fast-diff"
    both = [*allocated(cluster, a, whole_object), *allocated(cluster, b, whole_object)]
    return rbdranges.merge(both), "allocation"


def own_bytes(cluster: Cluster, point: Point) -> int:
    """Bytes of the objects the point's image holds itself (object map, whole objects)."""
    with opened(cluster, point) as img:
        return rbdranges.total(extents(img, None, False, True))


# Space figures walk whole objects: with fast-diff that is the object map (no data
# object is listed), so it costs the same on a 4 GiB and a 64 GiB image; each figure
# is rounded up to the objects it touches (never less than the truth).
WHOLE = True


def space(cluster: Cluster, point: Point) -> Space:
    """Provisioned size, bytes the point's image holds itself, and bytes only this point
    holds: written after the previous snapshot and overwritten before the next one (the
    head: written since the last snapshot)."""
    with opened(cluster, point) as img:
        size = int(img.size())
        mine = extents(img, None, False, WHOLE)
    with opened(cluster, Point(point.ns, point.image_id)) as head:
        snaps = user_snaps(head)
    names = [name for _, name in snaps]
    if point.snap is None:
        unique = mine if not names else same_image(cluster, point, _at(point, names[-1]), WHOLE)
        return Space(size, rbdranges.total(mine), rbdranges.total(unique))
    pos = names.index(point.snap) if point.snap in names else -1
    if pos < 0:
        return Space(size, rbdranges.total(mine), None)
    before = mine if pos == 0 else same_image(cluster, _at(point, names[pos - 1]), point, WHOLE)
    after_point = _at(point, names[pos + 1] if pos + 1 < len(names) else None)
    after = same_image(cluster, point, after_point, WHOLE)
    return Space(size, rbdranges.total(mine), rbdranges.total(rbdranges.intersect(before, after)))


def exclusive(cluster: Cluster, point: Point) -> int | None:
    """Bytes of a snapshot point's own data that no later point holds: what changed
    between it and the next snapshot (or the head) within what it holds itself.
    Summed over an image's points this counts each stored version once."""
    if point.snap is None:
        return None
    with opened(cluster, point) as img:
        mine = extents(img, None, False, WHOLE)
    with opened(cluster, Point(point.ns, point.image_id)) as head:
        names = [name for _, name in user_snaps(head)]
    if point.snap not in names:
        return None
    pos = names.index(point.snap)
    later = _at(point, names[pos + 1] if pos + 1 < len(names) else None)
    after = same_image(cluster, point, later, WHOLE)
    return rbdranges.total(rbdranges.intersect(mine, after))


def _at(point: Point, snap: str | None) -> Point:
    return Point(point.ns, point.image_id, snap)
