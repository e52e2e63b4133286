"""copy_in's data path: a chain of points from another array into one RBD image.

    chain   p1 ─────▶ p2 ─────▶ ... ─────▶ vvol          (oldest first, VolumeIOs)
    image   write p1's extents, snap vs-p1; write where p2 differs from p1, snap vs-p2; ...;
            write where vvol differs from the last point (no snapshot: that is the head)

Each snapshot's index entry is written (``creating``) before the RBD snapshot
and marked ``ready`` after it, as every other verb does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from . import rbdio, rbdnames, volio
from .base import Progress, VolumeIO
from .rbdindex import Entry, Index
from .rbdops import Images


def write_chain(
    images: Images,
    index: Index,
    entry: Entry,
    chain: Sequence[tuple[str, VolumeIO]],
    progress: Progress | None = None,
) -> None:
    """Write every point of ``chain`` into ``entry``'s image, snapshotting all but the last."""
    total = sum(data.size for _, data in chain)
    done = 0
    prev: VolumeIO | None = None
    for position, (point_id, data) in enumerate(chain):
        write_point(images, entry, prev, data)
        if position < len(chain) - 1:
            snap = Entry("snap", entry.ns, entry.image, entry.image_id, rbdnames.snap(point_id))
            index.put(point_id, snap)
            images.snap_create(entry.ref(), rbdnames.snap(point_id))
            index.put(point_id, dataclasses.replace(snap, state="ready"))
        prev = data
        done += data.size
        if progress is not None:
            progress(done, total)


def write_point(images: Images, entry: Entry, prev: VolumeIO | None, data: VolumeIO) -> None:
    """Make the image's head equal to ``data``, writing only where it differs from ``prev``."""
    images.resize(entry.ref(), data.size)
    ranges = list(data.extents()) if prev is None else volio.differing(prev, data, rbdio.BLOCK)
    with images.open(entry.ref(), writable=True) as img:
        vol = rbdio.RbdVolume(img)
        try:
            volio.copy_ranges(data, vol, ranges)
        finally:
            vol.settle()
