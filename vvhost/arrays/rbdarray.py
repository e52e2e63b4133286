"""The ``rbd`` array: vvols as Ceph RBD images in one pool, a RADOS namespace per space.

    vvol              image  pool/<space>/vv-<id>            (index: vvol:<id> -> image id)
    snapshot vvol     RBD snapshot vv-<base>@vs-<id>           (index: its image and snap)
    linked clone      clone v2 of a snapshot (of a live vvol: of vc-<clone>, a snapshot cut
                      for it that the clone owns: it goes when the clone does)
    full clone        linked clone, then flattened (the copy runs with progress)
    revert            the snapshot's spare clone (made after the last revert to it), or
                      a new clone of it, staged as the vvol's next image; the commit points
                      the vvol at it in one index write and retires the old image, which
                      stays while snapshot vvols read it; the reaper moves images nobody
                      needs to the RBD trash and purges what no clone reads any more;
                      the next spare is made after the answer (rbdafter.py, rbdrevert.py)

Names come from vvol and operation ids (rbdnames.py), and the index (rbdindex.py)
is written before an image or snapshot is made, so recovery finds every
leftover.  One lock serialises the index decisions of this process; data
copies (full clones, copy_in) run outside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import ArrayOffline, BackendError, DataMissing, InUse, InvalidInput, ReadOnly
from . import (
    rbdaudit,
    rbdcopy,
    rbdcut,
    rbddiff,
    rbdfence,
    rbdindex,
    rbdio,
    rbdmove,
    rbdnames,
    rbdranges,
    rbdwatchers,
    volio,
)
from .base import ArrayBackend, Changed, ClientWatch, Opener, Progress, Space, VolumeIO
from .rbdafter import Aftercare
from .rbdconn import Cluster
from .rbdflatten import MAX_CLONE_DEPTH, Flattener, depth
from .rbdindex import Entry, Image, Index
from .rbdops import Images, ceph
from .rbdrevert import Reverts
from .settings import RbdSettings
from .sources import RbdSource

PURGE_PASSES = MAX_CLONE_DEPTH + 2
MARKER_FRESH = 0.25  # seconds a marker read that found this array's id stands


class RbdArray:
    kind = "rbd"

    def __init__(
        self,
        name: str,
        settings: RbdSettings,
        array_id: str | None = None,
        clients: ClientWatch | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.array_id = array_id
        self.cluster = Cluster(name, settings, array_id, clients)
        self.index = Index(self.cluster)
        self.images = Images(self.cluster)
        self.held = rbdcut.Held(self.images)
        self.flattener = Flattener(self.cluster)
        self.after = Aftercare(name)
        self._lock = threading.RLock()
        self._checked = False
        self._marked_until = 0.0  # until when the pool's marker counts as read
        self.reverts = Reverts(self)

    # -- state ------------------------------------------------------------------------
    def offline(self) -> str | None:
        """Why the array cannot be used now (None: it can).  A marker read that found
        the pool this array's counts for ``MARKER_FRESH`` seconds: one call (a
        revert and its answer) reads it once."""
        if time.monotonic() < self._marked_until:
            return None
        self._marked_until = 0.0
        try:
            owner = self.cluster.marker()
        except (ArrayOffline, BackendError) as exc:
            self._checked = False
            return str(exc.fields.get("reason") or exc.fields.get("detail") or exc)
        if self.array_id is None or owner == self.array_id:
            self._marked_until = time.monotonic() + MARKER_FRESH
            return None
        self._checked = False
        if owner is None:
            return f"pool {self.settings.pool!r} is not marked as this array's"
        return f"pool {self.settings.pool!r} belongs to array {owner}"

    def check(self) -> None:
        reason = self.offline()
        if reason is not None:
            raise ArrayOffline(array=self.name, reason=reason)
        self._checked = True

    def _ready(self) -> None:
        if not self._checked:
            self.check()

    def claim(self) -> None:
        """Mark the pool as this array's (``InUse`` when another array holds it)."""
        assert self.array_id is not None
        self.cluster.claim(self.array_id)
        self._marked_until = 0.0
        self._checked = False

    def release(self) -> None:
        """Take the pool's mark back, unless it still holds volumes or trash."""
        if self.array_id is None or self.index.entries() or self.index.retired():
            return
        self.cluster.unclaim(self.array_id)
        self._marked_until = 0.0

    def audit(self) -> list[str]:
        found = rbdaudit.report(self)
        return [
            f"{what.replace('_', ' ')}: {', '.join(items)}"
            for what, items in found.items()
            if items and what != "partials"  # partials are reported through partials()
        ]

    def probe(self) -> dict[str, bool]:
        self._ready()
        return {"instant": True, "namespaces": True, "sparse": True, "reflink": False}

    def free_bytes(self) -> int:
        self._ready()
        return self.cluster.free_bytes()

    def fence_clients(self, addrs: Sequence[str]) -> None:
        """Blocklist these clients of the cluster (another process's, never this one's)."""
        rbdfence.blocklist(self.cluster, addrs)

    def close(self) -> None:
        idle = self.after.close()
        if self.flattener.close() and idle:
            self.cluster.close()  # not under a flatten still running: librados would crash
        self._checked = False
        self._marked_until = 0.0

    # -- lookups ----------------------------------------------------------------------
    def _entry(self, vvol_id: str) -> Entry:
        return self._whole(vvol_id, self.index.entry(vvol_id))

    def _whole(self, vvol_id: str, entry: Entry | None) -> Entry:
        """``entry`` (of ``vvol_id``) if its data is whole, else ``DataMissing``."""
        if entry is None or not entry.ready:
            raise DataMissing(ref=vvol_id, array=self.name, path=f"rbd:{self.settings.pool}")
        return entry

    def _space(self, space: str) -> str:
        ns = rbdnames.namespace(space)
        self.images.ensure_namespace(ns)
        self.index.apply(put={rbdindex.space_key(ns): ""})
        return ns

    def locator(self, vvol_id: str) -> dict[str, Any]:
        """What the catalog keeps about where a vvol lives (image id, not only the name)."""
        e = self._entry(vvol_id)
        return {
            "pool": self.settings.pool,
            "namespace": e.ns,
            "image": e.image,
            "image_id": e.image_id,
            "snap": e.snap,
        }

    def source(self, vvol_id: str) -> RbdSource:
        e = self._entry(vvol_id)
        s = self.settings
        return RbdSource(s.pool, e.ns, e.image, e.snap, s.conf, s.user, s.keyring)

    def openers(self, vvol_id: str) -> list[Opener]:
        """The watchers of a vvol's image, named by the monitors where they can say
        (a snapshot vvol is never watched itself: its base is)."""
        self._ready()
        entry = self.index.entry(vvol_id)
        if entry is None or entry.kind != "image":
            return []
        image = entry.ref() if entry.image_id else self._found(entry.ns, entry.image)
        return [] if image is None else rbdwatchers.openers(self.images, image)

    def exists(self, vvol_id: str) -> bool:
        self._ready()
        entry = self.index.entry(vvol_id)
        return entry is not None and entry.ready

    def list_ids(self) -> list[str]:
        self._ready()
        return sorted(vid for vid, e in self.index.entries().items() if e.ready)

    def partials(self) -> list[str]:
        self._ready()
        return sorted(vid for vid, e in self.index.entries().items() if not e.ready)

    # -- volumes ----------------------------------------------------------------------
    def create(self, vvol_id: str, size: int, space: str) -> None:
        self._ready()
        with self._lock:
            if self.exists(vvol_id):
                return
            ns = self._space(space)
            entry = Entry("image", ns, rbdnames.image(vvol_id))
            self._name_free(vvol_id, entry)
            self.index.put(vvol_id, entry)
            image_id = self.images.create(ns, entry.image, size)
            self.images.resize(Image(ns, entry.image, image_id), size)
            self.index.put(vvol_id, dataclasses.replace(entry, image_id=image_id, state="ready"))

    def resize(self, vvol_id: str, size: int) -> None:
        self._ready()
        entry = self._entry(vvol_id)
        if entry.kind != "image":
            raise ReadOnly(ref=vvol_id, action="resize")
        self.images.resize(entry.ref(), size)

    def set_readonly(self, vvol_id: str, readonly: bool) -> None:
        self._ready()
        with self._lock:
            entry = self._entry(vvol_id)
            if entry.kind == "image" and entry.readonly != readonly:
                self.index.put(vvol_id, dataclasses.replace(entry, readonly=readonly))

    @contextlib.contextmanager
    def open(self, vvol_id: str, writable: bool = False) -> Iterator[VolumeIO]:
        self._ready()
        entry = self._entry(vvol_id)
        if writable and (entry.kind != "image" or entry.readonly):
            raise ReadOnly(ref=vvol_id, action="open it for writing")
        if writable:
            self.reverts.written(entry.image_id)
        with ceph(self.name, f"opening {entry.image}"):
            with self.images.open(entry.ref(), entry.snap, writable) as img:
                vol = rbdio.RbdVolume(img)
                try:
                    yield vol
                except BaseException:
                    vol.settle()
                    raise
                vol.flush()  # queued writes land (or fail) before the image closes

    def allocated(self, vvol_id: str) -> int:
        """The image's own objects (not its parent's), from the object map."""
        self._ready()
        entry = self._entry(vvol_id)
        if entry.snap is None and self.reverts.unwritten(entry.image_id):
            return 0  # a clone a revert just made: the answer of that revert
        with ceph(self.name, f"measuring {entry.image}"):
            return rbddiff.own_bytes(self.cluster, _point(entry))

    def space(self, vvol_id: str) -> Space:
        self._ready()
        entry = self._entry(vvol_id)
        with ceph(self.name, f"measuring {entry.image}"):
            return rbddiff.space(self.cluster, _point(entry))

    def exclusive(self, vvol_id: str, newer: Sequence[str]) -> int | None:
        """A snapshot's own data that the next point of its image no longer holds
        (the image's snapshot order is the family's: ``newer`` is not needed)."""
        self._ready()
        entry = self._entry(vvol_id)
        if entry.kind != "snap":
            return None
        with ceph(self.name, f"measuring {entry.image}"):
            return rbddiff.exclusive(self.cluster, _point(entry))

    def remove(self, vvol_id: str) -> None:
        """Snapshots: the RBD snapshot goes (to the trash namespace while clones read it).
        Images: refused while a client has them open; otherwise retired while snapshot
        vvols read them, else moved to the RBD trash (purged by ``reap``)."""
        self.held.release(vvol_id)  # a prepared snapshot dropped: its image closes
        self._ready()
        with self._lock:
            entry = self.index.entry(vvol_id)
            if entry is None:
                return
            if entry.kind == "snap":
                self._remove_snap(vvol_id, entry)
            else:
                self._remove_image(vvol_id, entry)

    def _remove_snap(self, vvol_id: str, entry: Entry) -> None:
        self.reverts.drop_spare(vvol_id)  # a clone of the snapshot would keep it
        if entry.snap is not None and entry.image_id:
            self.images.snap_remove(entry.ref(), entry.snap)
        self.index.apply(drop=[rbdindex.vvol_key(vvol_id)])
        self._release(entry.ref())

    def _remove_image(self, vvol_id: str, entry: Entry) -> None:
        image = entry.ref() if entry.image_id else self._found(entry.ns, entry.image)
        job = self.flattener.status(vvol_id)
        if job is not None and job["state"] == "running":
            reason = f"being flattened ({job['done']}/{job['total']} objects)"
            raise InUse(kind="vvol", ref=vvol_id, reason=reason)
        if image is not None:
            busy = rbdwatchers.openers(self.images, image)
            if busy:
                reason = f"rbd image {entry.image} is open by {busy[0].label()}"
                raise InUse(kind="vvol", ref=vvol_id, reason=reason)
        for op, staged in self.index.staged(vvol_id).items():
            self.images.remove(staged)
            self.index.apply(drop=[rbdindex.staged_key(vvol_id, op)])
        if entry.clone_of is not None:
            self.images.snap_remove(entry.clone_of, rbdnames.clone_point(vvol_id))
        drops = [rbdindex.vvol_key(vvol_id)]
        if not entry.ready:  # a half-made copy_in: its snapshots were never handed out
            drops += [rbdindex.vvol_key(sid) for sid in entry.chain]
        put: dict[str, rbdindex.Record] = {}
        if image is not None:
            put[rbdindex.retired_key(image.image_id)] = image
        self.index.apply(put=put, drop=drops)
        if image is not None:
            self._release(image)

    def _name_free(self, vvol_id: str, entry: Entry) -> None:
        """Refuse to reuse an image name whose image other volumes still read (a removed
        vvol's retired image): an image of that name may only be a crashed attempt's."""
        found = self._found(entry.ns, entry.image)
        if found is None:
            return
        others = [v for v in rbdindex.users(self.index.entries(), found.image_id) if v != vvol_id]
        if others or found.image_id in self.index.retired():
            raise BackendError(
                array=self.name,
                detail=f"image {entry.image} of an earlier {vvol_id} is still read by "
                f"{', '.join(others) or 'clones'}; remove those first",
            )

    def _found(self, ns: str, name: str) -> Image | None:
        image_id = self.images.lookup(ns, name)
        return None if image_id is None else Image(ns, name, image_id)

    def _reap(self, image: Image) -> bool:
        if not self.images.exists(image):
            self.index.apply(drop=[rbdindex.retired_key(image.image_id)])
            return True
        return self._release(image)

    def _release(self, image: Image) -> bool:
        """Trash a retired image once no vvol uses it, no snapshot vvol reads it and no
        live clone has it as parent; until then it stays retired."""
        key = rbdindex.retired_key(image.image_id)
        if key not in {rbdindex.retired_key(i) for i in self.index.retired()}:
            return False
        if rbdindex.users(self.index.entries(), image.image_id):
            return False
        if self.images.has_children(image) or self.images.watchers(image):
            return False  # the reaper tries again
        self.images.trash(image)
        self.index.apply(drop=[key])
        return True

    # -- points in time ---------------------------------------------------------------
    def snapshot(self, vvol_id: str, snap_id: str) -> str:
        self._prepare_snapshot(vvol_id, snap_id)
        self.cut_snapshot(vvol_id, snap_id)
        self.commit_snapshot(snap_id)
        return "rbd-snap"

    def prepare_snapshot(self, vvol_id: str, snap_id: str) -> None:
        """Record the snapshot-to-be (so a crash leaves it findable) and open its
        image for the cut; no data moves."""
        entry = self._prepare_snapshot(vvol_id, snap_id)
        if entry.snap is not None:
            self.held.hold(snap_id, entry.ref(), entry.snap)

    def _prepare_snapshot(self, vvol_id: str, snap_id: str) -> Entry:
        self._ready()
        with self._lock:
            base = self._entry(vvol_id)
            if base.kind != "image":
                raise InvalidInput(detail=f"vvol {vvol_id!r} is a snapshot: snapshot its base")
            known = self.index.entry(snap_id)
            if known is not None:
                if known.image_id != base.image_id:
                    raise InvalidInput(detail=f"snapshot {snap_id!r} exists on another vvol")
                return known
            snap = Entry("snap", base.ns, base.image, base.image_id, rbdnames.snap(snap_id))
            self.index.put(snap_id, snap)
            return snap

    def cut_snapshot(self, vvol_id: str, snap_id: str) -> None:
        entry = self.index.entry(snap_id)
        if entry is None or entry.snap is None:
            raise InvalidInput(detail=f"snapshot {snap_id!r} of {vvol_id!r} was not prepared")
        self.images.snap_create(entry.ref(), entry.snap)

    def cut_snapshots(self, cuts: list[tuple[str, str]]) -> None:
        """Cut a group's snapshots at once (see :mod:`rbdcut`: one monitor proposal
        for all instead of one each)."""
        refs: list[tuple[str, rbdindex.Image, str]] = []
        for vvol_id, snap_id in cuts:
            known = self.held.target(snap_id)  # held from prepare until commit or removal
            if known is not None:
                refs.append((snap_id, *known))
                continue
            entry = self.index.entry(snap_id)
            if entry is None or entry.snap is None:  # prepare tied it to vvol_id's image
                raise InvalidInput(detail=f"snapshot {snap_id!r} of {vvol_id!r} was not prepared")
            refs.append((snap_id, entry.ref(), entry.snap))
        rbdcut.cut_all(self.held, refs)

    def commit_snapshot(self, snap_id: str) -> None:
        self.held.release(snap_id)
        with self._lock:
            entry = self.index.entry(snap_id)
            if entry is None or entry.snap is None:
                raise InvalidInput(detail=f"snapshot {snap_id!r} was not prepared")
            if not entry.ready:
                if entry.snap not in self.images.user_snaps(entry.ref()):
                    raise InvalidInput(detail=f"snapshot {snap_id!r} was not cut")
                self.index.put(snap_id, dataclasses.replace(entry, state="ready"))

    def abort_snapshot(self, snap_id: str) -> None:
        self._ready()
        with self._lock:
            entry = self.index.entry(snap_id)
            if entry is not None and entry.kind == "snap":
                self._remove_snap(snap_id, entry)

    def clone(
        self, src_id: str, new_id: str, space: str, linked: bool, progress: Progress | None = None
    ) -> str:
        """Linked: an RBD clone (v2) of the snapshot, or of a point cut for it from a live
        vvol.  Full: the same clone flattened (data copied, progress reported)."""
        self._ready()
        how = "rbd-clone" if linked else "rbd-copy"
        with self._lock:
            known = self.index.entry(new_id)
            if known is not None and known.ready:
                return how
            src = self._entry(src_id)
            ns = self._space(space)
            if src.kind == "snap" and src.snap is not None:
                point, cut = src.snap, None
            else:
                point, cut = rbdnames.clone_point(new_id), src.ref()
            entry = Entry("image", ns, rbdnames.image(new_id), clone_of=cut)
            self.index.put(new_id, entry)
            if cut is not None:
                self.images.snap_create(cut, point)
            image_id = self.images.clone(src.ref(), point, ns, entry.image)
            entry = dataclasses.replace(entry, image_id=image_id)
            self.index.put(new_id, entry)
        if not linked:
            self.images.flatten(entry.ref(), progress)
            if cut is not None:  # the copy no longer reads its cut point
                self.images.snap_remove(cut, point)
                entry = dataclasses.replace(entry, clone_of=None)
        with self._lock:
            self.index.put(new_id, dataclasses.replace(entry, state="ready"))
        if linked:
            self._bound_depth(new_id, entry.ref())
        return how

    def _bound_depth(self, vvol_id: str, image: Image) -> None:
        with ceph(self.name, f"measuring the clone depth of {image.name}"):
            if depth(self.cluster, image, MAX_CLONE_DEPTH + 1) > MAX_CLONE_DEPTH:
                self.flattener.start(vvol_id, image)

    def background(self, vvol_id: str) -> dict[str, Any] | None:
        status = self.flatten_status(vvol_id)
        return None if status is None else {"work": "flatten", **status}

    def flatten_status(self, vvol_id: str) -> dict[str, Any] | None:
        """Progress of a background flatten of the vvol (None: none started here)."""
        return self.flattener.status(vvol_id)

    def wait_flatten(self, vvol_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        return self.flattener.wait(vvol_id, timeout)

    def revert(self, vvol_id: str, snap_id: str, op: str, progress: Progress | None = None) -> None:
        """Stage the snapshot's data as the vvol's next image: its spare clone, or a new
        clone (constant time either way; rbdrevert.py)."""
        self._ready()
        with self._lock:
            self.reverts.stage(vvol_id, snap_id, op)
        if progress is not None:
            progress(1, 1)

    def revert_commit(self, vvol_id: str, op: str, snap_id: str | None = None) -> None:
        """Point the vvol at the staged clone and retire its old image (one index write);
        the rest comes after the answer."""
        self._ready()
        with self._lock:
            self.reverts.commit(vvol_id, op, snap_id)

    def revert_undo(self, vvol_id: str, op: str) -> None:
        self._ready()
        with self._lock:
            self.reverts.undo(vvol_id, op)

    # -- data movement ----------------------------------------------------------------
    def changed(
        self, vvol_id: str, base_id: str | None, chunk: int, method: str | None = None
    ) -> Changed:
        self._ready()
        if method not in (None, "fast-diff", "allocation"):
            raise InvalidInput(detail=f"rbd arrays find changes by fast-diff, not {method}")
        entry = self._entry(vvol_id)
        base = None if base_id is None else _point(self._entry(base_id))
        with ceph(self.name, f"diffing {entry.image}"):
            with self.images.open(entry.ref(), entry.snap) as img:
                size, obj = int(img.size()), int(img.stat()["obj_size"])
            whole = chunk % obj == 0
            ranges, how = rbddiff.changed(self.cluster, _point(entry), base, whole)
        return Changed(rbdranges.align(ranges, chunk, size), how)

    def write_ranges(
        self,
        src: VolumeIO,
        vvol_id: str,
        ranges: Sequence[tuple[int, int]],
        progress: Progress | None = None,
    ) -> int:
        with self.open(vvol_id, writable=True) as dst:
            with ceph(self.name, f"writing {vvol_id}"):
                return volio.copy_ranges(src, dst, ranges, progress)

    def copy_in(
        self,
        vvol_id: str,
        space: str,
        chain: Sequence[tuple[str, VolumeIO]],
        progress: Progress | None = None,
    ) -> None:
        """One image for the whole chain: each point written as what differs from the one
        before, then snapshotted; the last point is the vvol itself."""
        self._ready()
        if not chain or chain[-1][0] != vvol_id:
            raise InvalidInput(detail=f"copy_in of {vvol_id!r} needs a chain ending with it")
        with self._lock:
            self._drop_earlier_copy(vvol_id, [pid for pid, _ in chain[:-1]])
            ns = self._space(space)
            snaps = [pid for pid, _ in chain[:-1]]
            entry = Entry("image", ns, rbdnames.image(vvol_id), chain=snaps)
            self._name_free(vvol_id, entry)
            self.index.put(vvol_id, entry)
            image_id = self.images.create(ns, entry.image, chain[0][1].size)
            entry = dataclasses.replace(entry, image_id=image_id)
            self.index.put(vvol_id, entry)
        with ceph(self.name, f"copying into {entry.image}"):
            rbdcopy.write_chain(self.images, self.index, entry, chain, progress)
        self.index.put(vvol_id, dataclasses.replace(entry, state="ready"))

    def _drop_earlier_copy(self, vvol_id: str, snaps: list[str]) -> None:
        """Remove what an earlier copy_in of ``vvol_id`` made: the image and the
        snapshot vvols on it that either chain names."""
        prior = self.index.entry(vvol_id)
        if prior is None:
            return
        for sid in dict.fromkeys([*prior.chain, *snaps]):
            snap = self.index.entry(sid)
            if snap is not None and snap.kind == "snap" and snap.image_id == prior.image_id:
                self._remove_snap(sid, snap)
        self.remove(vvol_id)

    def relocate(
        self, vvol_ids: Sequence[str], space: str, progress: Progress | None = None
    ) -> None:
        """Move vvols (a vvol and its snapshots) to another storage container of this
        array: their images migrate to its namespace (rbdmove.py)."""
        self._ready()
        with self._lock:  # spares go first (a migration would re-link them); reverts remake them
            for vid in vvol_ids:
                self.reverts.drop_spare(vid)
        rbdmove.relocate(self, vvol_ids, rbdnames.namespace(space), self._lock, progress)

    def reap(self) -> list[str]:
        """Trash retired images nobody needs any more, then purge the trash of what no
        clone reads; returns the images purged.  Also restarts the background flatten
        of images deeper than the limit that no flatten here has handled."""
        self._ready()
        gone: list[str] = []
        with self._lock:
            for _ in range(PURGE_PASSES):  # a clone purged in one pass frees its parent next
                released = [image for image in self.index.retired().values() if self._reap(image)]
                spaces = self.index.spaces()
                purged = [name for ns in spaces for name in self.images.purge_trash(ns)]
                gone += purged
                if not released and not purged:
                    break
            images = [(vid, e.ref()) for vid, e in self.index.entries().items() if _writable(e)]
        for vid, image in images:  # too deep and not flattened here (e.g. after a restart)
            if self.flattener.status(vid) is None:
                self._bound_depth(vid, image)
        return gone


def _point(entry: Entry) -> rbddiff.Point:
    return rbddiff.Point(entry.ns, entry.image_id, entry.snap)


def _conforms(array: RbdArray) -> ArrayBackend:
    """The class implements every verb of the interface (checked by mypy)."""
    return array


def _writable(entry: Entry) -> bool:
    return entry.kind == "image" and entry.ready and bool(entry.image_id)
