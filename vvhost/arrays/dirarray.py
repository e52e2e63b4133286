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

from .. import bitmap, fsutil
from ..errors import ArrayOffline, BackendError
from . import identity
from .base import Progress
from .sources import FileSource

SUFFIX = ".raw"
PART = ".part"


class DirArray:
    def __init__(
        self, name: str, path: str, array_id: str | None = None, fs_id: str | None = None
    ) -> None:
        self.name = name
        self.root = path
        self.vdir = os.path.join(path, "vvols")
        self.array_id = array_id
        self.fs_id = fs_id

    def offline(self) -> str | None:
        """Why the directory is not this array now (None: it is)."""
        if self.array_id is None:
            return None
        return identity.offline_reason(self.root, self.array_id, self.fs_id)

    def check(self) -> None:
        reason = self.offline()
        if reason is not None:
            raise ArrayOffline(array=self.name, reason=reason)

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
            return {"reflink": fsutil.supports_reflink(self.vdir), "sparse": True}
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot probe {self.vdir}: {exc.strerror or exc}"
            ) from exc

    def locate(self, vvol_id: str) -> str:
        return os.path.join(self.vdir, vvol_id + SUFFIX)

    def source(self, vvol_id: str) -> FileSource:
        return FileSource(self.locate(vvol_id))

    def exists(self, vvol_id: str) -> bool:
        return os.path.exists(self.locate(vvol_id))

    def create(self, vvol_id: str, size: int) -> None:
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

    def copy_in(self, source: str, vvol_id: str, progress: Progress | None = None) -> str:
        how = self.stage(source, vvol_id, progress)
        self.commit_stage(vvol_id)
        return how

    def stage(
        self, source: str, vvol_id: str, progress: Progress | None = None, sync: bool = True
    ) -> str:
        """Write a copy of ``source`` next to the volume (``.part``); the volume is
        untouched.  ``sync`` False: ``commit_stage`` makes the copy durable."""
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

    def commit_stage(self, vvol_id: str) -> None:
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

    def restage(self, source: str, vvol_id: str) -> int:
        """Bring a copy staged by reflink up to date with ``source``: remap only the
        chunks whose extents differ now (found from FIEMAP, no data read); returns
        the bytes remapped."""
        self.check()
        part = self.locate(vvol_id) + PART
        try:
            if os.path.getsize(source) != os.path.getsize(part):
                self.stage(source, vvol_id, sync=False)
                return os.path.getsize(source)
            diff = bitmap.diff_chunks(source, part, method="fiemap")
            return fsutil.reflink_ranges(source, part, diff.ranges)
        except (OSError, ValueError) as exc:
            raise BackendError(
                array=self.name, detail=f"update of {part} from {source} failed: {exc}"
            ) from exc

    def staged(self, vvol_id: str) -> bool:
        return os.path.exists(self.locate(vvol_id) + PART)

    def discard_stage(self, vvol_id: str) -> None:
        self.check()
        _unlink(self.locate(vvol_id) + PART)

    def keep(self, vvol_id: str, as_id: str) -> None:
        """Make ``as_id`` name the volume's current data (a hard link: instant).  Once
        the volume is replaced by ``commit_stage`` the old data lives on under ``as_id``."""
        self.check()
        keep = self.locate(as_id)
        try:
            os.link(self.locate(vvol_id), keep)
        except FileExistsError:
            pass
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot keep {vvol_id}: {exc.strerror}"
            ) from exc

    def restore(self, vvol_id: str, from_id: str) -> None:
        """Make the volume name ``from_id``'s data again (atomic, instant)."""
        self.check()
        tmp = self.locate(vvol_id) + PART
        _unlink(tmp)
        try:
            os.link(self.locate(from_id), tmp)
            os.replace(tmp, self.locate(vvol_id))
            _fsync_dir(self.vdir)
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"cannot restore {vvol_id}: {exc.strerror}"
            ) from exc

    def write_ranges(
        self,
        source: str,
        vvol_id: str,
        ranges: Sequence[tuple[int, int]],
        progress: Progress | None = None,
    ) -> int:
        self.check()
        try:
            return fsutil.write_ranges(source, self.locate(vvol_id), list(ranges), progress)
        except OSError as exc:
            raise BackendError(
                array=self.name, detail=f"write into {vvol_id}: {exc.strerror}"
            ) from exc

    def set_readonly(self, vvol_id: str, readonly: bool) -> None:
        self.check()
        os.chmod(self.locate(vvol_id), 0o400 if readonly else 0o600)

    def used(self, vvol_id: str) -> int:
        try:
            return fsutil.allocated_bytes(self.locate(vvol_id))
        except FileNotFoundError:
            return 0

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


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
