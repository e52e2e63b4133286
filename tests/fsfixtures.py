"""Throw-away filesystems on loop devices for tests.

    TMPDIR/
      loopfs-XXXX/          private directory made by make_loop_fs
        fs.img              sparse image (mkfs.xfs -m reflink=1, mkfs.btrfs or mkfs.ext4)
        mnt/                mounted with ``mount -o loop``; yielded to the test

``with make_loop_fs(tmpdir) as mnt:`` mounts it; leaving the block always
unmounts (a few ``umount`` tries, then ``umount -l``), detaches the loop
device if it is still attached, and deletes the image.  ``loop_capability()``
returns why this machine cannot do that (``None`` when it can), for
``pytest.skip``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from types import TracebackType

MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "ext4": ["mkfs.ext4", "-q", "-F", "-m", "0"],  # no reflink; small ones fill up fast
}


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _size_bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    suffix = size[-1:].upper()
    return int(size[:-1]) * units[suffix] if suffix in units else int(size)


def _mounted(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == real for line in f)


@dataclass
class LoopFs:
    """A sparse image formatted with ``fstype`` and loop-mounted while entered."""

    tmpdir: str
    fstype: str = "xfs"
    size: str = "2G"
    workdir: str = ""
    image: str = ""
    mountpoint: str = ""

    def __enter__(self) -> str:
        self.workdir = tempfile.mkdtemp(prefix="loopfs-", dir=self.tmpdir)
        self.image = os.path.join(self.workdir, "fs.img")
        self.mountpoint = os.path.join(self.workdir, "mnt")
        try:
            self._setup()
        except BaseException:
            self.cleanup()
            raise
        return self.mountpoint

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def _setup(self) -> None:
        os.mkdir(self.mountpoint)
        with open(self.image, "wb") as f:
            f.truncate(_size_bytes(self.size))
        for cmd in (
            [*MKFS[self.fstype], self.image],
            ["mount", "-o", "loop", self.image, self.mountpoint],
        ):
            done = _run(*cmd)
            if done.returncode != 0:
                raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")

    def unmount(self) -> None:
        """Unmount (the loop device goes with it); ``mount`` brings it back."""
        done = _run("umount", self.mountpoint)
        if done.returncode != 0:
            raise OSError(f"umount {self.mountpoint} failed: {done.stderr.strip()}")

    def mount(self) -> None:
        done = _run("mount", "-o", "loop", self.image, self.mountpoint)
        if done.returncode != 0:
            raise OSError(f"mount {self.image} failed: {done.stderr.strip()}")

    def cleanup(self) -> None:
        """Unmount, detach and delete; safe to call more than once."""
        if self.mountpoint and _mounted(self.mountpoint):
            for _ in range(5):
                if _run("umount", self.mountpoint).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                _run("umount", "-l", self.mountpoint)
        if self.image:
            attached = _run("losetup", "-j", self.image).stdout
            for line in attached.splitlines():
                _run("losetup", "-d", line.split(":", 1)[0])
        if self.workdir and not _mounted(self.mountpoint):
            shutil.rmtree(self.workdir, ignore_errors=True)


def make_loop_fs(tmpdir: str, fstype: str = "xfs", size: str = "2G") -> LoopFs:
    """Return a context manager that yields the mountpoint of a fresh fs."""
    if fstype not in MKFS:
        raise ValueError(f"unsupported fstype {fstype!r}")
    return LoopFs(str(tmpdir), fstype, size)


def loop_capability(fstype: str = "xfs") -> str | None:
    """Why a loop-mounted ``fstype`` cannot be made here, or ``None`` if it can."""
    if os.geteuid() != 0:
        return "loop mounts need root"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control"
    tool = MKFS.get(fstype, ["mkfs." + fstype])[0]
    if shutil.which(tool) is None:
        return f"{tool} is not installed"
    try:
        with tempfile.TemporaryDirectory() as tmp, make_loop_fs(tmp, fstype, "512M"):
            pass
    except OSError as exc:
        return f"cannot mount a loop {fstype}: {exc}"
    return None
