"""Moving vvols to another storage container of the same RBD array: another namespace.

Namespaces are what separate tenants, so a vvol that changes container must
change namespace too.  RBD cannot rename across namespaces; live migration
can, and keeps snapshots and re-links clones:

    for every image the vvols' data lives on (head, and retired images holding
    their snapshots), not yet in the target namespace:
        migration_prepare(src ns -> dst ns, same name)   the image id changes
        migration_execute (copies the data, progress)     migration_commit
        one index write: every record naming the old image id names the new one

Each step can be repeated: an image already prepared resumes, one already
committed is found by name in the target namespace.  Refused while a client
has an image open (migration needs it closed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import rbd

from ..errors import InUse, InvalidInput
from . import rbdindex, rbdwatchers
from .base import Progress
from .rbdindex import Entry, Image
from .rbdops import ceph

if TYPE_CHECKING:
    from .rbdarray import RbdArray


def relocate(
    array: RbdArray,
    vvol_ids: Sequence[str],
    ns: str,
    lock: AbstractContextManager[Any],
    progress: Progress | None = None,
) -> None:
    """Data moves outside ``lock`` (the array's index lock); index writes inside it."""
    entries = array.index.entries()
    missing = [vid for vid in vvol_ids if vid not in entries or not entries[vid].ready]
    if missing:
        raise InvalidInput(detail=f"cannot move {', '.join(missing)}: not on array {array.name}")
    images = {entries[v].image_id: entries[v].ref() for v in vvol_ids if entries[v].ns != ns}
    for n, old in enumerate(images.values()):
        busy = rbdwatchers.openers(array.images, old) if array.images.exists(old) else []
        if busy:
            raise InUse(kind="rbd image", ref=old.name, reason=f"it is open by {busy[0].label()}")
        new = migrate(array, old, ns, progress)
        with lock:
            rewrite(array, old.image_id, new)
        if progress is not None:
            progress(n + 1, len(images))


def migrate(array: RbdArray, old: Image, ns: str, progress: Progress | None = None) -> Image:
    """Move one image into namespace ``ns`` (same name); returns it with its new id."""
    array.images.ensure_namespace(ns)
    with array.cluster.ioctx(old.ns) as src, array.cluster.ioctx(ns) as dst:
        with ceph(array.name, f"moving {old.name} to namespace {ns}"):
            if array.images.lookup(ns, old.name) is None:
                array.images.rbd.migration_prepare(src, old.name, dst, old.name)
            if _migrating(array, dst, old.name):
                array.images.rbd.migration_execute(dst, old.name, on_progress=_steps(progress))
                array.images.rbd.migration_commit(dst, old.name)
    new_id = array.images.lookup(ns, old.name)
    assert new_id is not None
    return Image(ns, old.name, new_id)


def _migrating(array: RbdArray, io: Any, name: str) -> bool:
    try:
        array.images.rbd.migration_status(io, name)
    except (rbd.InvalidArgument, rbd.ImageNotFound):
        return False
    return True


def _steps(progress: Progress | None) -> Any:
    if progress is None:
        return None

    def step(done: int, total: int) -> int:
        progress(done, total)
        return 0

    return step


def rewrite(array: RbdArray, old_id: str, new: Image) -> None:
    """Point every index record naming image ``old_id`` at ``new`` (one atomic write)."""
    put: dict[str, rbdindex.Record] = {}
    drop: list[str] = []
    for vid, entry in array.index.entries().items():
        moved = moved_entry(entry, old_id, new)
        if moved != entry:
            put[rbdindex.vvol_key(vid)] = moved
        for op, staged in array.index.staged(vid).items():
            if staged.image_id == old_id:
                put[rbdindex.staged_key(vid, op)] = new
    if old_id in array.index.retired():
        drop.append(rbdindex.retired_key(old_id))
        put[rbdindex.retired_key(new.image_id)] = new
    put[rbdindex.space_key(new.ns)] = ""
    array.index.apply(put=put, drop=drop)


def moved_entry(entry: Entry, old_id: str, new: Image) -> Entry:
    """``entry`` with image ``old_id`` replaced by ``new`` (its own image, a clone's cut point)."""
    if entry.image_id == old_id:
        entry = dataclasses.replace(entry, ns=new.ns, image=new.name, image_id=new.image_id)
    if entry.clone_of is not None and entry.clone_of.image_id == old_id:
        entry = dataclasses.replace(entry, clone_of=new)
    return entry
