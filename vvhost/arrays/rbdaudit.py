"""Compare the RBD array's index with what its pool holds (for ``vvhost audit``).

    index                    pool (namespaces the array made)
    vvol:<id> ready  ──────▶ image (by id), snapshot (by name)  missing: entries_without_data
    vvol/staged/retired ◀─── vv-* images                        unknown: images_without_entries
    snapshot entries ◀────── vs-* / vc-* user snapshots         unknown: stale_snapshots
                             vv-* in the RBD trash              trash (``reap`` purges)

Only names this backend makes are reported: other images in a namespace are
not vvhost's business.  Nothing is changed here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import rbd

from . import rbdnames

if TYPE_CHECKING:
    from .rbdarray import RbdArray
from .rbdops import ceph


def report(array: RbdArray) -> dict[str, list[str]]:
    array.check()
    entries = array.index.entries()
    retired = array.index.retired()
    known_ids = {e.image_id for e in entries.values() if e.image_id}
    known_ids |= set(retired)
    staged = [img for vid in entries for img in array.index.staged(vid).values()]
    # clones kept for the next revert to a snapshot (one whose snapshot went is a leak)
    staged += [img for sid, img in array.index.spares().items() if sid in entries]
    known_names = {(e.ns, e.image) for e in entries.values()}
    known_names |= {(img.ns, img.name) for img in staged}  # a revert's clone, named first
    known_snaps: set[tuple[str, str | None]] = {
        (e.image_id, e.snap) for e in entries.values() if e.snap
    }
    known_snaps |= {
        (e.clone_of.image_id, rbdnames.clone_point(vid))
        for vid, e in entries.items()
        if e.clone_of is not None
    }
    out: dict[str, list[str]] = {
        "images_without_entries": [],
        "entries_without_data": [],
        "stale_snapshots": [],
        "trash": [],
        "partials": sorted(vid for vid, e in entries.items() if not e.ready),
    }
    spaces = sorted(set(array.index.spaces()) | {e.ns for e in entries.values()})
    for ns in spaces:
        with ceph(array.name, f"listing namespace {ns or 'default'}"):
            _walk(array, ns, known_ids, known_names, known_snaps, out)
    for vid, entry in sorted(entries.items()):
        if entry.ready and not _has(array, entry.ns, entry.image_id, entry.snap):
            out["entries_without_data"].append(vid)
    return out


def _walk(
    array: RbdArray,
    ns: str,
    known_ids: set[str],
    known_names: set[tuple[str, str]],
    known_snaps: set[tuple[str, str | None]],
    out: dict[str, list[str]],
) -> None:
    with array.cluster.ioctx(ns) as io:
        images = [(str(i["id"]), str(i["name"])) for i in rbd.RBD().list2(io)]
        trashed = [
            str(t["name"])
            for t in rbd.RBD().trash_list(io)
            if rbdnames.ours(str(t["name"])) and _overdue(io, t)
        ]
        for image_id, name in images:
            if not rbdnames.ours(name):
                continue
            label = f"{ns}/{name}" if ns else name
            if image_id not in known_ids and (ns, name) not in known_names:
                out["images_without_entries"].append(label)
            with rbd.Image(io, image_id=image_id, read_only=True) as img:
                for snap in img.list_snaps():
                    if snap.get("namespace", 0) != rbd.RBD_SNAP_NAMESPACE_TYPE_USER:
                        continue
                    if (image_id, str(snap["name"])) not in known_snaps:
                        out["stale_snapshots"].append(f"{label}@{snap['name']}")
    out["trash"] += [f"{ns}/{n}" if ns else n for n in trashed]


TRASH_GRACE = 300.0  # seconds the reaper has to purge a trashed image nothing reads


def _overdue(io: Any, entry: dict[str, Any]) -> bool:
    """A trashed image no clone reads, there for longer than the reaper needs."""
    deleted = entry.get("deletion_time")
    if deleted is not None and time.time() - deleted.timestamp() < TRASH_GRACE:
        return False
    try:
        with rbd.Image(io, image_id=str(entry["id"]), read_only=True) as img:
            return not list(img.list_children2())
    except rbd.Error:
        return True


def _has(array: RbdArray, ns: str, image_id: str, snap: str | None) -> bool:
    with array.cluster.ioctx(ns) as io:
        try:
            with rbd.Image(io, image_id=image_id, read_only=True) as img:
                return snap is None or bool(img.snap_exists(snap))
        except rbd.ImageNotFound:
            return False
