"""The ``dir`` array: one sparse raw file per vvol in a directory.

    ARRAY_PATH/
      .vvhost-array               the marker: which array this is (see identity.py)
      vvols/<vvol-id>.raw         the volume (snapshots are read-only files)
      vvols/<vvol-id>.raw.part    a copy being written; renamed into place when whole

Snapshots and clones are FICLONE reflinks where the filesystem shares extents
(XFS with reflink=1, btrfs): instant, no data copied.  Elsewhere (ext4) they are
sparse copies that keep holes: correct, but proportional to the data.

Every verb that touches the directory first checks the marker: an array whose
filesystem is not mounted is offline (``ArrayOffline``), and nothing is created
on whatever lies under the empty mountpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from .. import bitmap, fsutil
from ..errors import ArrayOffline, BackendError, InvalidInput
from . import identity, rbdranges, volio
from .base import Changed, Opener, Progress, Space, VolumeIO
from .sources import FileSource
from .volio import FileIO

SUFFIX = ".raw"
PART = ".part"


class DirArray:
    kind = "dir"

    def __init__(
        self, name: str, path: str, array_id: str | None = None, fs_id: str | None = None
    ) -> None:
        self.name = name
        self.root = path
        self.vdir = os.path.join(path, "vvols")
        self.array_id = array_id
        self.fs_id = fs_id
        self._reflink: bool | None = None  # found by probe()

    def offline(self) -> str | None:
        """Why the directory is not this array now (None: it is)."""
        if self.array_id is None:
            return None
        return identity.offline_reason(self.root, self.array_id, self.fs_id)

    def check(self) -> None:
        reason = self.offline()
        if reason is not None:
            raise ArrayOffline(array=self.name, reason=reason)

    def claim(self) -> None:
        """Write the marker naming this array into its (empty or new) directory."""
        assert self.array_id is not None
        try:
            self.fs_id = identity.write_marker(self.root, self.array_id, self.name).fs_id
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot mark {self.root}: {exc.strerror or exc}"
            ) from exc

    def release(self) -> None:
        """Take back the marker (and the empty vvols directory); an array that still
        holds files keeps its marker, so nobody adopts them unawares."""
        marker = identity.read_marker(self.root)
        if marker is None or marker.array_id != self.array_id:
            return
        with contextlib.suppress(OSError):
            if os.path.isdir(self.vdir):
                os.rmdir(self.vdir)
        if not os.path.exists(self.vdir):
            identity.remove_marker(self.root)

    def _ensure(self) -> None:
        self.check()
        try:
            os.makedirs(self.vdir, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot create {self.vdir}: {exc.strerror}"
            ) from exc

    def probe(self) -> dict[str, bool]:
        self._ensure()
        try:
            reflink = self._reflink = fsutil.supports_reflink(self.vdir)
            return {"reflink": reflink, "instant": reflink, "sparse": True, "namespaces": False}
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot probe {self.vdir}: {exc.strerror or exc}"
            ) from exc

    def locate(self, vvol_id: str) -> str:
        return os.path.join(self.vdir, vvol_id + SUFFIX)

    def source(self, vvol_id: str) -> FileSource:
        return FileSource(self.locate(vvol_id))

    def openers(self, vvol_id: str) -> list[Opener]:
        """Files carry no record of who has them open: none known."""
        return []

    def locator(self, vvol_id: str) -> dict[str, Any]:
        return {"file": os.path.relpath(self.locate(vvol_id), self.root)}

    def exists(self, vvol_id: str) -> bool:
        return os.path.exists(self.locate(vvol_id))

    def create(self, vvol_id: str, size: int, space: str) -> None:
        self._ensure()
        path = self.locate(vvol_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if os.path.getsize(path) == size:
                return  # idempotent retry
            raise BackendError(array=self.name, detail=f"{path} exists with another size") from None
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot create {path}: {exc.strerror}"
            ) from exc
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, vvol_id: str) -> None:
        self.check()
        for path in (self.locate(vvol_id), self.locate(vvol_id) + PART):
            try:
                _free_extents(path)
                _unlink(path)
            except OSError as exc:
                raise BackendError(
                    array=self.name, detail=f"cannot remove {path}: {exc.strerror}"
                ) from exc

    def resize(self, vvol_id: str, size: int) -> None:
        self.check()
        try:
            os.truncate(self.locate(vvol_id), size)
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot resize {vvol_id}: {exc.strerror}"
            ) from exc

    # -- points in time: staged copies (.part) swapped in by rename -------------------
    def _stage(
        self, source: str, vvol_id: str, progress: Progress | None = None, sync: bool = True
    ) -> str:
        """Write a copy of ``source`` next to the volume (``.part``); the volume is
        untouched.  ``sync`` False: ``_commit`` makes the copy durable."""
        self._ensure()
        part = self.locate(vvol_id) + PART
        try:
            how = fsutil.clone_or_copy(source, part, progress, sync)
            os.chmod(part, 0o600)
        except OSError as exc:
            _unlink(part)
            raise BackendError(
                array=self.name, detail=f"copy {source} -> {part} failed: {exc.strerror or exc}"
            ) from exc
        return how

    def _commit(self, vvol_id: str) -> None:
        """Atomically put the staged copy in place of the volume."""
        self.check()
        final = self.locate(vvol_id)
        try:
            fsutil.fsync_path(final + PART)
            os.replace(final + PART, final)
            _fsync_dir(self.vdir)
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot replace {final}: {exc.strerror}"
            ) from exc

    def _restage(self, source: str, vvol_id: str) -> int:
        """Bring a copy staged by reflink up to date with ``source``: remap only the
        chunks whose extents differ now (found from FIEMAP, no data read); returns
        the bytes remapped."""
        part = self.locate(vvol_id) + PART
        try:
            if os.path.getsize(source) != os.path.getsize(part):
                self._stage(source, vvol_id, sync=False)
                return os.path.getsize(source)
            diff = bitmap.diff_chunks(source, part, method="fiemap")
            return fsutil.reflink_ranges(source, part, diff.ranges)
        except (OSError, ValueError) as exc:
            raise BackendError(
                array=self.name, detail=f"update of {part} from {source} failed: {exc}"
            ) from exc

    def _staged(self, vvol_id: str) -> bool:
        return os.path.exists(self.locate(vvol_id) + PART)

    def _discard(self, vvol_id: str) -> None:
        self.check()
        _unlink(self.locate(vvol_id) + PART)

    def _reflinks(self) -> bool:
        if self._reflink is None:
            self._reflink = fsutil.supports_reflink(self.vdir)
        return self._reflink

    def snapshot(self, vvol_id: str, snap_id: str) -> str:
        how = self._stage(self.locate(vvol_id), snap_id)
        self._commit(snap_id)
        self.set_readonly(snap_id, True)
        return how

    def prepare_snapshot(self, vvol_id: str, snap_id: str) -> None:
        """On reflink filesystems clone now, while the guest runs: the cut then
        only remaps what changed since."""
        self.check()
        if self._reflinks():
            self._stage(self.locate(vvol_id), snap_id, sync=False)

    def cut_snapshot(self, vvol_id: str, snap_id: str) -> None:
        self.check()
        if self._staged(snap_id):
            self._restage(self.locate(vvol_id), snap_id)
        else:
            self._stage(self.locate(vvol_id), snap_id, sync=False)

    def cut_snapshots(self, cuts: list[tuple[str, str]]) -> None:
        """One after the other: each is a remap of what changed since ``prepare``."""
        for vvol_id, snap_id in cuts:
            self.cut_snapshot(vvol_id, snap_id)

    def commit_snapshot(self, snap_id: str) -> None:
        if not self.exists(snap_id):
            self._commit(snap_id)
        self.set_readonly(snap_id, True)

    def abort_snapshot(self, snap_id: str) -> None:
        self.remove(snap_id)

    def clone(
        self,
        src_id: str,
        new_id: str,
        space: str,
        linked: bool,
        progress: Progress | None = None,
    ) -> str:
        """A reflink where the filesystem shares extents, a sparse copy elsewhere
        (``linked`` changes nothing here: the catalog keeps the parent)."""
        how = self._stage(self.locate(src_id), new_id, progress)
        self._commit(new_id)
        return how

    def revert(self, vvol_id: str, snap_id: str, op: str, progress: Progress | None = None) -> None:
        self._stage(self.locate(snap_id), vvol_id, progress)

    def revert_commit(self, vvol_id: str, op: str, snap_id: str | None = None) -> None:
        """The rename is the commit point; once done there is no staged copy left."""
        if self._staged(vvol_id):
            self._commit(vvol_id)

    def revert_undo(self, vvol_id: str, op: str) -> None:
        self._discard(vvol_id)

    # -- data movement ------------------------------------------------------------------
    def open(self, vvol_id: str, writable: bool = False) -> AbstractContextManager[VolumeIO]:
        self.check()
        try:
            return FileIO(self.locate(vvol_id), writable)
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot open {vvol_id}: {exc.strerror}"
            ) from exc

    def changed(
        self, vvol_id: str, base_id: str | None, chunk: int, method: str | None = None
    ) -> Changed:
        self.check()
        path = self.locate(vvol_id)
        try:
            if base_id is None:
                return Changed(bitmap.allocated_chunks(path, chunk), "allocation")
            diff = bitmap.diff_chunks(path, self.locate(base_id), chunk, method=method)
        except ValueError as exc:  # e.g. fiemap asked for where extents are not shared
            raise InvalidInput(detail=f"changed ranges of {vvol_id}: {exc}") from None
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot read {vvol_id}: {exc.strerror or exc}"
            ) from exc
        return Changed(diff.ranges, diff.method)

    def copy_in(
        self,
        vvol_id: str,
        space: str,
        chain: Sequence[tuple[str, VolumeIO]],
        progress: Progress | None = None,
    ) -> None:
        """Each point becomes its own file: earlier points read-only snapshots."""
        self._ensure()
        total = sum(io.size for _, io in chain)
        base = 0

        def tick(done: int, _: int) -> None:
            if progress:
                progress(base + done, total)

        for vid, io in chain:
            part = self.locate(vid) + PART
            _unlink(part)
            try:
                if isinstance(io, FileIO):
                    fsutil.clone_or_copy(io.path, part, tick)
                else:
                    with open(part, "wb") as fh:
                        fh.truncate(io.size)
                    with FileIO(part, writable=True) as dst:
                        volio.copy_all(io, dst, tick)
                os.chmod(part, 0o600)
            except OSError as exc:
                _unlink(part)
                raise BackendError(
                    array=self.name, detail=f"copy into {part} failed: {exc.strerror or exc}"
                ) from exc
            self._commit(vid)
            if vid != vvol_id:
                self.set_readonly(vid, True)
            base += io.size

    def write_ranges(
        self,
        src: VolumeIO,
        vvol_id: str,
        ranges: Sequence[tuple[int, int]],
        progress: Progress | None = None,
    ) -> int:
        self.check()
        try:
            if isinstance(src, FileIO):
                return fsutil.write_ranges(src.path, self.locate(vvol_id), list(ranges), progress)
            with FileIO(self.locate(vvol_id), writable=True) as dst:
                return volio.copy_ranges(src, dst, ranges, progress)
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"write into {vvol_id}: {exc.strerror}"
            ) from exc

    def relocate(
        self, vvol_ids: Sequence[str], space: str, progress: Progress | None = None
    ) -> None:
        pass  # one directory holds every container's files

    def reap(self) -> list[str]:
        return []  # a file is gone when removed

    def background(self, vvol_id: str) -> dict[str, Any] | None:
        return None  # a file has nothing going on by itself

    def audit(self) -> list[str]:
        return []  # every file is a volume or a partial (list_ids, partials)

    def set_readonly(self, vvol_id: str, readonly: bool) -> None:
        self.check()
        os.chmod(self.locate(vvol_id), 0o400 if readonly else 0o600)

    def allocated(self, vvol_id: str) -> int:
        try:
            return os.stat(self.locate(vvol_id)).st_blocks * 512
        except FileNotFoundError:
            return 0

    def space(self, vvol_id: str) -> Space:
        """Allocated blocks, and the bytes of extents no other file shares (FIEMAP's
        SHARED flag: reflinked data a snapshot still shares with its base is not
        the snapshot's alone).  Without reflink every extent is the file's own."""
        path = self.locate(vvol_id)
        try:
            st = os.stat(path)
            unique = fsutil.unshared_bytes(path)
        except FileNotFoundError:
            return Space(0, 0, None)
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot measure {vvol_id}: {exc.strerror or exc}"
            ) from exc
        allocated = st.st_blocks * 512
        return Space(st.st_size, allocated, None if unique is None else min(unique, allocated))

    def exclusive(self, vvol_id: str, newer: Sequence[str]) -> int | None:
        """FIEMAP physical ranges of the file minus those of the ``newer`` files:
        reflinked extents a newer point still shares are counted there."""
        try:
            mine = fsutil.physical_ranges(self.locate(vvol_id))
            if mine is None:
                return None
            others: list[tuple[int, int]] = []
            for other in newer:
                with contextlib.suppress(FileNotFoundError):
                    others += fsutil.physical_ranges(self.locate(other)) or []
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot measure {vvol_id}: {exc.strerror or exc}"
            ) from exc
        ranges = rbdranges.merge(mine)
        return rbdranges.total(ranges) - rbdranges.total(
            rbdranges.intersect(ranges, rbdranges.merge(others))
        )

    def list_ids(self) -> list[str]:
        return self._names(SUFFIX)

    def partials(self) -> list[str]:
        return self._names(SUFFIX + PART)

    def _names(self, suffix: str) -> list[str]:
        self.check()
        try:
            names = os.listdir(self.vdir)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(suffix)] for n in names if n.endswith(suffix))

    def close(self) -> None:
        pass  # nothing held open

    def fence_clients(self, addrs: Sequence[str]) -> None:
        pass  # files have no clients: a fenced control plane stops at the catalog

    def free_bytes(self) -> int:
        self._ensure()
        st = os.statvfs(self.vdir)
        return st.f_bavail * st.f_frsize


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_extents(path: str) -> None:
    """Give back the file's extents now (truncate to 0) when this is its only name:
    XFS frees an unlinked file's extents later, in the background, so the reflinked
    data it shared would look shared for a while after it went."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        if os.fstat(fd).st_nlink == 1:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
