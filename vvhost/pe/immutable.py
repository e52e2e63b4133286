"""The immutable inode flag (``chattr +i``), which binds root too.

    FS_IOC_GETFLAGS / FS_IOC_SETFLAGS   (an int of FS_*_FL bits, on an fd of the file)
    FS_IMMUTABLE_FL = 0x10              no write, truncate, rename, unlink or link,
                                        whoever asks (needs CAP_LINUX_IMMUTABLE to set)

ext4, XFS and btrfs keep the flag; tmpfs and others answer ENOTTY/EOPNOTSUPP, which
is raised as :class:`ImmutableUnsupported` so a caller can refuse rather than
pretend.  A read-only binding of a snapshot through a ``file`` endpoint sets the
flag on the snapshot's data file; the last such binding's release clears it (a
snapshot is never written, so the flag only ever stops accidents).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010
_FLAGS = struct.Struct("=l")  # the kernel reads an int; a long-sized buffer is safe
_UNSUPPORTED = {errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class ImmutableUnsupported(OSError):
    """The filesystem of the file has no immutable flag."""


def _flags(fd: int) -> int:
    buf = bytearray(_FLAGS.size)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
    return int(_FLAGS.unpack(buf)[0]) & 0xFFFFFFFF


def _set(path: str, on: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        try:
            flags = _flags(fd)
            new = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
            if new != flags:
                fcntl.ioctl(fd, FS_IOC_SETFLAGS, _FLAGS.pack(new))
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                raise ImmutableUnsupported(exc.errno, "no immutable flag here", path) from exc
            raise
    finally:
        os.close(fd)


def is_immutable(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return bool(_flags(fd) & FS_IMMUTABLE_FL)
    except OSError:
        return False
    finally:
        os.close(fd)


def set_immutable(path: str) -> None:
    _set(path, True)


def clear_immutable(path: str) -> None:
    _set(path, False)
