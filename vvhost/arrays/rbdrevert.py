"""Revert of an RBD vvol to one of its snapshots, keeping the newer ones, in constant time.

    stage   the snapshot has a whole spare clone: nothing to write, it is taken at
            the commit; else staged:<vvol>:<op> written, then a clone
            vv-<vvol>.r-<op> of the snapshot made (librbd clone v2)
    commit  one index write: vvol:<vvol> = the clone, retired:<old image>, and the
            staged key (or the spare's key) dropped -- the answer goes out here
    after   (rbdafter.py, in the background) make the snapshot's next spare, bound
            the clone depth; the old image stays retired until the reaper trashes it
    undo    remove the staged clone, drop its key (a spare not taken stays)

    spare:<snap> -> vv-<vvol>.p-<op>   a clone of the snapshot nobody wrote to, made
            after revert <op> went to that snapshot, so that the next revert to it
            only moves index keys.  Removed with the snapshot; dropped before its
            images move to another namespace; remade after each revert that took it.

Every image is named in the index before it exists (staged and spare keys without
an id), so what a crash leaves behind is found: a spare without an id is removed
and made again, a staged clone is removed (undo) or becomes the vvol's (commit).
Recovery after the commit point passes the snapshot (from the journal): with no
staged key, the snapshot's spare is taken then -- unless it is the one made after
this very revert (named by its op), which means the commit was done already.
The old image is recorded as retired in the commit's index write; the reaper
trashes it once nothing needs it.  A spare lost with the process only costs the
next revert its clone.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BackendError, InvalidInput
from . import rbdindex, rbdnames
from .rbdindex import Entry, Image

if TYPE_CHECKING:
    from .rbdarray import RbdArray

FRESH_FOR = 2.0  # seconds a clone a revert made counts as unwritten (the vvol is unbound)


@dataclass(frozen=True)
class Pending:
    """What ``stage`` decided, for ``commit`` in the same process."""

    image: Image  # the clone that becomes the vvol's data
    snap_id: str
    spare: bool  # the snapshot's spare, taken by the commit's index write


class Reverts:
    def __init__(self, array: RbdArray) -> None:
        self.array = array
        self._pending: dict[tuple[str, str], Pending] = {}  # (vvol, op) -> staged
        self._fresh: dict[str, float] = {}  # image id -> until when nothing wrote to it

    def stage(self, vvol_id: str, snap_id: str, op: str) -> None:
        a = self.array
        keys = [
            rbdindex.vvol_key(vvol_id),
            rbdindex.vvol_key(snap_id),
            rbdindex.staged_key(vvol_id, op),
            rbdindex.spare_key(snap_id),
        ]
        raw = a.index.pick(keys)  # everything the stage decides on, in one read
        base = a._whole(vvol_id, _entry(a, vvol_id, raw.get(keys[0])))
        snap = a._whole(snap_id, _entry(a, snap_id, raw.get(keys[1])))
        if base.kind != "image" or snap.kind != "snap" or snap.snap is None:
            raise InvalidInput(detail=f"cannot revert {vvol_id!r} to {snap_id!r}")
        staged = _image(raw.get(keys[2]))
        if staged is None:
            spare = self._whole_spare(snap_id, base.ns, _image(raw.get(keys[3])))
            if spare is not None:
                self._pending[(vvol_id, op)] = Pending(spare, snap_id, spare=True)
                return
            staged = Image(base.ns, rbdnames.staged(vvol_id, op))
            a.index.apply(put={rbdindex.staged_key(vvol_id, op): staged})
        image_id = staged.image_id or a.images.clone(snap.ref(), snap.snap, base.ns, staged.name)
        made = dataclasses.replace(staged, image_id=image_id)
        self._pending[(vvol_id, op)] = Pending(made, snap_id, spare=False)

    def _whole_spare(self, snap_id: str, ns: str, spare: Image | None) -> Image | None:
        """The snapshot's spare if it is whole (made to the end, still there)."""
        a = self.array
        if spare is None:
            return None
        if spare.ns != ns or not spare.image_id:
            self.drop_spare(snap_id)
            return None
        if a.images.lookup(spare.ns, spare.name) != spare.image_id:
            a.index.apply(drop=[rbdindex.spare_key(snap_id)])  # gone: nothing to remove
            return None
        return spare

    def commit(self, vvol_id: str, op: str, snap_id: str | None = None) -> None:
        a = self.array
        pending = self._pending.pop((vvol_id, op), None)
        snap_id = pending.snap_id if pending is not None else snap_id
        keys = [rbdindex.staged_key(vvol_id, op), rbdindex.vvol_key(vvol_id)]
        if snap_id:
            keys.append(rbdindex.spare_key(snap_id))
        raw = a.index.pick(keys)
        base = a._whole(vvol_id, _entry(a, vvol_id, raw.get(keys[1])))
        staged = _image(raw.get(keys[0]))
        spare = _image(raw.get(keys[2])) if snap_id else None
        if staged is not None:
            known = pending.image.image_id if pending is not None else ""
            image_id = staged.image_id or known or a.images.lookup(staged.ns, staged.name)
            image = dataclasses.replace(staged, image_id=image_id or "")
            drop = keys[0]
        elif pending is not None and pending.spare:
            if spare is None or spare.image_id != pending.image.image_id:
                raise BackendError(
                    array=a.name, detail=f"the spare clone of {snap_id} changed during revert {op}"
                )
            image, drop = spare, keys[2]
        elif pending is None and spare is not None and _takes(spare, base, vvol_id, op):
            if a.images.lookup(spare.ns, spare.name) != spare.image_id:
                raise BackendError(array=a.name, detail=f"the spare clone of {snap_id} is gone")
            image, drop = spare, keys[2]  # recovery after the commit point
        else:
            return  # committed already (or never staged): nothing to do
        if not image.image_id:
            raise BackendError(array=a.name, detail=f"revert {op} of {vvol_id} is unstaged")
        old = base.ref()
        new = dataclasses.replace(base, image=image.name, image_id=image.image_id)
        a.index.apply(
            put={rbdindex.vvol_key(vvol_id): new, rbdindex.retired_key(old.image_id): old},
            drop=[drop],
        )
        self._fresh[image.image_id] = time.monotonic() + FRESH_FOR
        snap = snap_id or ""
        a.after.later(f"revert:{op}", lambda: self._after(vvol_id, old, new.ref(), snap, op))

    def _after(self, vvol_id: str, old: Image, new: Image, snap_id: str, op: str) -> None:
        """Make the snapshot's next spare, bound the clone depth.  The old image stays
        retired for the reaper: a trash move beside the opens that follow a revert
        (space figures, the next call) hung librbd 16.2 here."""
        a = self.array
        if snap_id:
            with a._lock:
                self.make_spare(vvol_id, snap_id, op)
        a._bound_depth(vvol_id, new)

    def undo(self, vvol_id: str, op: str) -> None:
        a = self.array
        self._pending.pop((vvol_id, op), None)  # a spare not taken stays the snapshot's
        staged = a.index.staged(vvol_id).get(op)
        if staged is None:
            return
        a.images.remove(staged)
        a.index.apply(drop=[rbdindex.staged_key(vvol_id, op)])

    # -- spares (the caller holds the array's lock) -------------------------------------
    def make_spare(self, vvol_id: str, snap_id: str, op: str) -> None:
        """A clone of snapshot ``snap_id`` for the next revert of ``vvol_id`` to it."""
        a = self.array
        snap = a.index.entry(snap_id)
        if snap is None or not snap.ready or snap.kind != "snap" or snap.snap is None:
            return  # the snapshot went meanwhile
        if a.index.spare(snap_id) is not None:
            return
        spare = Image(snap.ns, rbdnames.spare(vvol_id, op))
        a.index.apply(put={rbdindex.spare_key(snap_id): spare})
        image_id = a.images.clone(snap.ref(), snap.snap, snap.ns, spare.name)
        a.index.apply(
            put={rbdindex.spare_key(snap_id): dataclasses.replace(spare, image_id=image_id)}
        )

    def drop_spare(self, snap_id: str) -> None:
        """Remove the snapshot's spare clone (before the snapshot goes or moves)."""
        a = self.array
        spare = a.index.spare(snap_id)
        if spare is None:
            return
        a.images.remove(spare)
        a.index.apply(drop=[rbdindex.spare_key(snap_id)])

    # -- what the answer may say without asking the pool -----------------------------------
    def unwritten(self, image_id: str) -> bool:
        """Whether ``image_id`` is a clone a revert just made (the first answer only)."""
        return self._fresh.pop(image_id, 0.0) > time.monotonic()

    def written(self, image_id: str) -> None:
        self._fresh.pop(image_id, None)


def _entry(array: RbdArray, vvol_id: str, raw: bytes | None) -> Entry | None:
    return None if raw is None else array.index.decode(vvol_id, raw)


def _image(raw: bytes | None) -> Image | None:
    return None if raw is None else rbdindex.decode_image(raw)


def _takes(spare: Image, base: Entry, vvol_id: str, op: str) -> bool:
    """Whether recovery of revert ``op`` takes ``spare``: one that is whole and not the
    one made after this revert committed (that one is named by ``op``)."""
    return (
        bool(spare.image_id)
        and spare.ns == base.ns
        and spare.name not in (base.image, rbdnames.spare(vvol_id, op))
    )
