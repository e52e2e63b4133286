"""Low-level operations on raw volume files.

A raw volume file is a flat byte array whose unwritten parts are holes::

    offset 0                                              st_size
    |[ data ]........[ data data ]..........[ data ]......|
      seg 0   hole       seg 1      hole     seg 2   hole

``data_segments`` lists each ``[ data ]`` run (SEEK_DATA/SEEK_HOLE);
``sparse_copy`` copies only those, so holes stay holes.  ``reflink`` makes
XFS/btrfs share every extent (FICLONE), reading nothing; ``fiemap`` shows
where each run lives on disk, the same physical address for a shared run.
``write_ranges`` patches byte ranges into another file, punching holes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

Progress = Callable[[int, int], None]
Ranges = Iterable[tuple[int, int]]

FICLONE = 0x40049409
FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range)
_CLONE_RANGE = struct.Struct("=qQQQ")  # src_fd, src_offset, src_length, dest_offset
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FALLOC_FL_KEEP_SIZE = 0x1
FALLOC_FL_PUNCH_HOLE = 0x2

# fe_flags of a fiemap extent
LAST = 0x1
DELALLOC = 0x4
UNWRITTEN = 0x800
SHARED = 0x2000
UNRELIABLE = 0x2 | DELALLOC | 0x8 | 0x100 | 0x200  # unknown/encoded/unaligned/inline

_STEP = 64 * 1024 * 1024  # bytes per copy_file_range call / progress tick
_BLOCK = 1024 * 1024  # bytes per read/write in the fallback path
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}

# struct fiemap (32 bytes) followed by struct fiemap_extent[] (56 bytes each)
_FM_HEAD = struct.Struct("=QQIIII")
_FM_EXT = struct.Struct("=QQQQQIIII")
_FM_BATCH = 512


class ReflinkUnsupported(OSError):
    """The filesystem cannot clone between these two files."""


@dataclass(frozen=True)
class Extent:
    """One FIEMAP mapping: ``[logical, logical+length)`` lives at ``physical``."""

    logical: int
    physical: int
    length: int
    flags: int

    @property
    def end(self) -> int:
        return self.logical + self.length


@dataclass
class _Copier:
    """Copies byte runs between two fds, remembering if copy_file_range failed."""

    src: int
    dst: int
    total: int
    progress: Progress | None = None
    done: int = 0
    use_cfr: bool = True

    def copy(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            n = self._step(offset, min(_STEP, end - offset))
            if n == 0:  # source shrank under us: nothing left to copy
                return
            offset += n
            self.done += n
            if self.progress is not None:
                self.progress(self.done, self.total)

    def _step(self, offset: int, length: int) -> int:
        if self.use_cfr:
            try:
                n = os.copy_file_range(self.src, self.dst, length, offset, offset)
                if n:
                    return n
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self.use_cfr = False
        buf = os.pread(self.src, min(_BLOCK, length), offset)
        return os.pwrite(self.dst, buf, offset) if buf else 0


def _iter_data(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of data runs of ``fd`` within ``[start, end)``."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole up to EOF
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole


def data_runs(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of the data runs of an open file within ``[start, end)``."""
    return _iter_data(fd, start, end)


def data_segments(path: str) -> list[tuple[int, int]]:
    """Return ``(offset, length)`` of every data (non-hole) run of ``path``."""
    with open(path, "rb", buffering=0) as f:
        return list(_iter_data(f.fileno(), 0, os.fstat(f.fileno()).st_size))


def allocated_bytes(path: str) -> int:
    """Bytes of disk space the file occupies (``st_blocks * 512``)."""
    return os.stat(path).st_blocks * 512


def _check_distinct(src: str, dst: str) -> None:
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise ValueError(f"source and destination are the same file: {dst}")


def reflink(src: str, dst: str, sync: bool = True) -> None:
    """Make ``dst`` a ``FICLONE`` clone of ``src`` (created or overwritten); with
    ``sync`` False the caller makes it durable later (see ``fsync_path``).

    A ``dst`` this call created is removed again when the clone fails; one
    that existed before is left empty.
    """
    _check_distinct(src, dst)
    created = not os.path.exists(dst)
    with open(src, "rb", buffering=0) as s, open(dst, "wb", buffering=0) as d:
        try:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
            if sync:
                os.fsync(d.fileno())
        except OSError as exc:
            if created:
                os.unlink(dst)
            if exc.errno in _UNSUPPORTED:
                msg = f"reflink not supported: {exc.strerror}"
                raise ReflinkUnsupported(exc.errno, msg, dst) from exc
            raise


def reflink_ranges(src: str, dst: str, ranges: Ranges) -> int:
    """Make ``dst``'s ``ranges`` (offset, length; block aligned) share ``src``'s
    extents at the same offsets (``FICLONERANGE``); returns the bytes remapped."""
    done = 0
    with open(src, "rb", buffering=0) as s, open(dst, "r+b", buffering=0) as d:
        for offset, length in ranges:
            arg = _CLONE_RANGE.pack(s.fileno(), offset, length, offset)
            fcntl.ioctl(d.fileno(), FICLONERANGE, arg)
            done += length
    return done


def supports_reflink(directory: str) -> bool:
    """Try a ``FICLONE`` between two small temp files in ``directory``."""
    with tempfile.TemporaryDirectory(prefix=".reflink-probe-", dir=directory) as tmp:
        src, dst = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        with open(src, "wb") as f:
            f.write(b"\xa5" * 4096)
        try:
            reflink(src, dst)
        except ReflinkUnsupported:
            return False
        return True


def sparse_copy(src: str, dst: str, progress: Progress | None = None) -> int:
    """Copy the data runs of ``src`` into a fresh ``dst``; return bytes copied."""
    _check_distinct(src, dst)
    with open(src, "rb", buffering=0) as s, open(dst, "wb", buffering=0) as d:
        size = os.fstat(s.fileno()).st_size
        segments = list(_iter_data(s.fileno(), 0, size))
        d.truncate(size)
        copier = _Copier(s.fileno(), d.fileno(), sum(n for _, n in segments), progress)
        for offset, length in segments:
            copier.copy(offset, length)
        os.fsync(d.fileno())
        return copier.done


def clone_or_copy(src: str, dst: str, progress: Progress | None = None, sync: bool = True) -> str:
    """Reflink ``src`` to ``dst`` if possible, else sparse-copy; return which.
    ``sync`` False leaves a reflink's durability to the caller."""
    try:
        reflink(src, dst, sync)
    except ReflinkUnsupported:
        sparse_copy(src, dst, progress)
        return "copy"
    if progress is not None:
        total = sum(n for _, n in data_segments(dst))
        progress(total, total)
    return "reflink"


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fiemap_call(fd: int, start: int, count: int) -> list[Extent]:
    head = _FM_HEAD.pack(start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, count, 0)
    buf = bytearray(head + bytes(_FM_EXT.size * count))
    fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
    extents = []
    for i in range(min(count, _FM_HEAD.unpack_from(buf)[3])):  # fm_mapped_extents
        fields = _FM_EXT.unpack_from(buf, _FM_HEAD.size + i * _FM_EXT.size)
        extents.append(Extent(fields[0], fields[1], fields[2], fields[5]))
    return extents


def fiemap(path: str) -> list[Extent]:
    """Return the file's extents in logical order (after syncing its data)."""
    result: list[Extent] = []
    with open(path, "rb", buffering=0) as f:
        while True:
            batch = _fiemap_call(f.fileno(), result[-1].end if result else 0, _FM_BATCH)
            result.extend(batch)
            if not batch or batch[-1].flags & LAST:
                return result


def unshared_bytes(path: str) -> int | None:
    """Bytes of the file's extents that no other file shares (FIEMAP: extents without
    the SHARED flag, which XFS and btrfs set on reflinked data); None where the
    filesystem has no FIEMAP.  Reads no data: one ioctl per 512 extents."""
    try:
        extents = fiemap(path)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED | {errno.EBADR}:
            return None
        raise
    return sum(e.length for e in extents if not e.flags & SHARED)


def physical_ranges(path: str) -> list[tuple[int, int]] | None:
    """(physical offset, length) of every extent holding the file's data, in disk
    order; None where the filesystem has no FIEMAP."""
    try:
        extents = fiemap(path)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED | {errno.EBADR}:
            return None
        raise
    return sorted((e.physical, e.length) for e in extents if not e.flags & UNRELIABLE)


def fiemap_supported(path: str) -> bool:
    """True when ``FS_IOC_FIEMAP`` works on ``path``."""
    with open(path, "rb", buffering=0) as f:
        try:
            _fiemap_call(f.fileno(), 0, 0)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED | {errno.EBADR}:
                return False
            raise
        return True


def _punch_hole(fd: int, offset: int, length: int) -> int:
    """``fallocate(PUNCH_HOLE|KEEP_SIZE)``; return 0 or the errno."""
    func = ctypes.CDLL(None, use_errno=True).fallocate
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    return 0 if func(fd, mode, offset, length) == 0 else ctypes.get_errno()


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make ``[offset, offset+length)`` of ``fd`` read as zeros."""
    err = _punch_hole(fd, offset, length)
    if err and err not in _UNSUPPORTED:
        raise OSError(err, os.strerror(err))
    end = offset + length
    while err and offset < end:  # no hole punching here: write the zeros
        offset += os.pwrite(fd, bytes(min(_BLOCK, end - offset)), offset)


def _gaps(start: int, end: int, runs: Ranges) -> Iterator[tuple[int, int]]:
    """Yield the ``(offset, length)`` parts of ``[start, end)`` not in ``runs``."""
    pos = start
    for offset, length in runs:
        if offset > pos:
            yield pos, offset - pos
        pos = max(pos, offset + length)
    if pos < end:
        yield pos, end - pos


def write_ranges(src: str, dst: str, ranges: Ranges, progress: Progress | None = None) -> int:
    """Copy ``(offset, length)`` ranges of ``src`` into ``dst`` in place.

    Holes of ``src`` (and anything past its end) become zeros in ``dst``,
    punched as holes where the filesystem allows.  Returns the data bytes
    copied (zeroed bytes are not counted).
    """
    wanted = sorted((o, n) for o, n in ranges if n > 0)
    with open(src, "rb", buffering=0) as s, open(dst, "r+b", buffering=0) as d:
        sfd, dfd = s.fileno(), d.fileno()
        size = os.fstat(sfd).st_size
        plan = [(o, o + n, list(_iter_data(sfd, o, min(o + n, size)))) for o, n in wanted]
        copier = _Copier(sfd, dfd, sum(n for *_, runs in plan for _, n in runs), progress)
        for start, end, runs in plan:
            for offset, length in runs:
                copier.copy(offset, length)
            limit = min(end, os.fstat(dfd).st_size)  # past EOF reads nothing
            for offset, length in _gaps(start, limit, runs):
                zero_range(dfd, offset, length)
        reach = min(size, max((end for _, end, _ in plan), default=0))
        if os.fstat(dfd).st_size < reach:
            os.ftruncate(dfd, reach)
        os.fsync(dfd)
        return copier.done
