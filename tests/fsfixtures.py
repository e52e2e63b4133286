"""Throw-away filesystems on loop devices for tests: the package's own
``vvhost.loopfs`` (``with make_loop_fs(tmpdir) as mnt:`` yields a mounted fresh
filesystem; leaving the block unmounts, detaches and deletes it)."""

from __future__ import annotations

from vvhost.loopfs import MKFS, LoopFs, loop_capability


def make_loop_fs(tmpdir: str, fstype: str = "xfs", size: str = "2G") -> LoopFs:
    """A context manager that yields the mountpoint of a fresh ``fstype``."""
    return LoopFs(str(tmpdir), fstype, size)


__all__ = ["MKFS", "LoopFs", "loop_capability", "make_loop_fs"]
