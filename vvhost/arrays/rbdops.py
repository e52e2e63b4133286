"""Thin typed wrappers over the librbd calls the RBD array makes, each idempotent.

Images are opened by id wherever the id is known (names only for the first
lookup), so a rename or a trash move never makes vvhost touch the wrong image.
Every binding error becomes a ``BackendError`` naming the array and the step.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import Any

import rados
import rbd

from ..errors import BackendError
from . import rbdnames
from .rbdconn import Cluster
from .rbdindex import Image

FEATURES = (
    rbd.RBD_FEATURE_LAYERING
    | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
    | rbd.RBD_FEATURE_OBJECT_MAP
    | rbd.RBD_FEATURE_FAST_DIFF
    | rbd.RBD_FEATURE_DEEP_FLATTEN
)


@contextlib.contextmanager
def ceph(array: str, what: str) -> Iterator[None]:
    try:
        yield
    except (rbd.Error, rados.Error) as exc:
        raise BackendError(array=array, detail=f"{what}: {exc}") from None


def image_id(io: Any, name: str) -> str | None:
    """The id of image ``name`` in ``io``'s namespace without opening the image: one
    call of the ``rbd`` object class on its id object (``rbd_id.<name>``), which
    answers a length-prefixed string (u32 little endian, then the id)."""
    try:
        ret, out = io.execute(f"rbd_id.{name}", "rbd", "get_id", b"", 256)
    except rados.ObjectNotFound:
        return None
    raw = bytes(out)
    if ret < 4 or len(raw) < 4:
        return None
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length].decode() or None


class Images:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.rbd = rbd.RBD()

    @property
    def array(self) -> str:
        return self.cluster.array

    @contextlib.contextmanager
    def open(self, ref: Image, snap: str | None = None, writable: bool = False) -> Iterator[Any]:
        with self.cluster.ioctx(ref.ns) as io:
            kwargs: dict[str, Any] = {"read_only": not writable or snap is not None}
            if ref.image_id:
                kwargs["image_id"] = ref.image_id
            else:
                kwargs["name"] = ref.name
            with rbd.Image(io, **kwargs) as img:
                if snap is not None:  # set after opening: see rbddiff.opened
                    img.set_snap(snap)
                yield img

    def lookup(self, ns: str, name: str) -> str | None:
        """The id of image ``name`` in ``ns``, None when there is none."""
        with self.cluster.ioctx(ns) as io, ceph(self.array, f"looking up {name}"):
            return image_id(io, name)

    def exists(self, ref: Image) -> bool:
        try:
            with self.open(ref):
                return True
        except rbd.ImageNotFound:
            return False

    def ensure_namespace(self, ns: str) -> None:
        if not ns:
            return
        with self.cluster.ioctx() as io, ceph(self.array, f"creating namespace {ns}"):
            if not self.rbd.namespace_exists(io, ns):
                with contextlib.suppress(rbd.ImageExists, rbd.ObjectExists):
                    self.rbd.namespace_create(io, ns)

    def create(self, ns: str, name: str, size: int) -> str:
        with self.cluster.ioctx(ns) as io, ceph(self.array, f"creating {name}"):
            # an earlier attempt may have made it: it holds nothing yet
            with contextlib.suppress(rbd.ImageExists):
                self.rbd.create(io, name, size, features=FEATURES, old_format=False)
        found = self.lookup(ns, name)
        if found is None:
            raise BackendError(array=self.array, detail=f"image {name} vanished after creation")
        return found

    def clone(self, parent: Image, snap: str, ns: str, name: str) -> str:
        with self.cluster.ioctx(parent.ns) as pio, self.cluster.ioctx(ns) as cio:
            with ceph(self.array, f"cloning {parent.name}@{snap} to {name}"):
                with contextlib.suppress(rbd.ImageExists):
                    self.rbd.clone(pio, parent.name, snap, cio, name, features=FEATURES)
                found = image_id(cio, name)
        if found is None:
            raise BackendError(array=self.array, detail=f"clone {name} vanished after creation")
        return found

    def snap_create(self, ref: Image, snap: str) -> None:
        with ceph(self.array, f"snapshot {ref.name}@{snap}"), self.open(ref, writable=True) as img:
            if not img.snap_exists(snap):
                img.create_snap(snap)

    def snap_remove(self, ref: Image, snap: str) -> None:
        """Remove a snapshot; one with clones moves to the trash namespace (clone v2)
        and goes when its last clone does."""
        with ceph(self.array, f"removing {ref.name}@{snap}"):
            try:
                with self.open(ref, writable=True) as img:
                    if img.snap_exists(snap):
                        img.remove_snap(snap)
            except rbd.ImageNotFound:
                pass

    def user_snaps(self, ref: Image) -> list[str]:
        with ceph(self.array, f"listing snapshots of {ref.name}"), self.open(ref) as img:
            return [
                str(s["name"])
                for s in img.list_snaps()
                if s.get("namespace", 0) == rbd.RBD_SNAP_NAMESPACE_TYPE_USER
            ]

    def watchers(self, ref: Image) -> list[str]:
        """Addresses of the clients that have the image open (other than this one)."""
        me = self.cluster.handle().get_instance_id()
        with ceph(self.array, f"listing watchers of {ref.name}"):
            try:
                with self.open(ref) as img:
                    return [str(w["addr"]) for w in img.watchers_list() if int(w["id"]) != me]
            except rbd.ImageNotFound:
                return []

    def watcher_list(self, ref: Image) -> list[tuple[int, str]]:
        """(global client id, address) of the clients that have the image open
        (other than this one)."""
        me = self.cluster.handle().get_instance_id()
        with ceph(self.array, f"listing watchers of {ref.name}"):
            try:
                with self.open(ref) as img:
                    found = [(int(w["id"]), str(w["addr"])) for w in img.watchers_list()]
            except rbd.ImageNotFound:
                return []
        return [(gid, addr) for gid, addr in found if gid != me]

    def has_children(self, ref: Image) -> bool:
        """Whether a live clone reads the image (clones in the trash do not count: the
        image may follow them there, the purge takes the clones first)."""
        with ceph(self.array, f"listing clones of {ref.name}"):
            try:
                with self.open(ref) as img:
                    return any(not c.get("trash") for c in img.list_children2())
            except rbd.ImageNotFound:
                return False

    def trash(self, ref: Image) -> None:
        """Move an image nothing needs to the RBD trash (its user snapshots removed first)."""
        for snap in self.user_snaps(ref) if self.exists(ref) else []:
            self.snap_remove(ref, snap)
        with self.cluster.ioctx(ref.ns) as io, ceph(self.array, f"moving {ref.name} to trash"):
            with contextlib.suppress(rbd.ImageNotFound):
                self.rbd.trash_move(io, ref.name, 0)

    def remove(self, ref: Image) -> None:
        """Delete an image that nothing depends on (a staged revert, a half-made copy)."""
        if not self.exists(ref):
            return
        for snap in self.user_snaps(ref):
            self.snap_remove(ref, snap)
        with self.cluster.ioctx(ref.ns) as io, ceph(self.array, f"removing {ref.name}"):
            with contextlib.suppress(rbd.ImageNotFound):
                self.rbd.remove(io, ref.name)

    def purge_trash(self, ns: str) -> list[str]:
        """Delete the trash entries this backend made that nothing needs; names purged."""
        gone = []
        with self.cluster.ioctx(ns) as io:
            with ceph(self.array, f"listing the trash of {ns or 'the pool'}"):
                entries = list(self.rbd.trash_list(io))
            for entry in entries:
                if not rbdnames.ours(str(entry["name"])):
                    continue
                try:
                    self.rbd.trash_remove(io, entry["id"])
                except (rbd.ImageHasSnapshots, rbd.ImageBusy, rbd.InvalidArgument):
                    continue  # clones still read it; it goes after them
                except (rbd.Error, rados.Error) as exc:
                    detail = f"purging {entry['name']}: {exc}"
                    raise BackendError(array=self.array, detail=detail) from None
                gone.append(f"{ns}/{entry['name']}" if ns else str(entry["name"]))
        return gone

    def resize(self, ref: Image, size: int) -> None:
        with ceph(self.array, f"resizing {ref.name}"), self.open(ref, writable=True) as img:
            if img.size() != size:
                img.resize(size)

    def flatten(self, ref: Image, progress: Any = None) -> None:
        """Copy the parents' data into the image; ``progress(done, total)`` in objects."""
        seen = [0]

        def step(done: int, total: int) -> int:
            seen[0] = total
            if progress is not None:
                progress(done, total)
            return 0

        with ceph(self.array, f"flattening {ref.name}"), self.open(ref, writable=True) as img:
            try:
                img.get_parent_image_spec()
            except rbd.ImageNotFound:
                return
            img.flatten(on_progress=step)
        if progress is not None and seen[0]:
            progress(seen[0], seen[0])  # librbd counts objects from 0
