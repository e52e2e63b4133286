"""A small filesystem on a loop device, for a reflink array where the machine's own
filesystem has none (the quickstart; tests too).

    DIR/
      loopfs-XXXX/          made by LoopFs
        fs.img              sparse image (mkfs.xfs -m reflink=1, mkfs.btrfs or mkfs.ext4)
        mnt/                ``mount -o loop fs.img mnt``; what ``with LoopFs(...)`` yields

Leaving the ``with`` block unmounts (a few ``umount`` tries, then ``umount -l``),
detaches the loop device and deletes the image.  ``release(DIR)`` does the same
for whatever a killed process left mounted or attached below DIR.
``loop_capability()`` says why this machine cannot do it (``None`` when it can).
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


def _mounts() -> list[str]:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return [line.split()[1].replace("\\040", " ") for line in fh]


def _mounted(path: str) -> bool:
    return os.path.realpath(path) in _mounts()


def _unmount(path: str) -> None:
    for _ in range(5):
        if _run("umount", path).returncode == 0:
            return
        time.sleep(0.2)
    _run("umount", "-l", path)


def _detach(image: str) -> None:
    for line in _run("losetup", "-j", image).stdout.splitlines():
        _run("losetup", "-d", line.split(":", 1)[0])


@dataclass
class LoopFs:
    """A sparse image formatted with ``fstype`` and loop-mounted while entered."""

    tmpdir: str
    fstype: str = "xfs"
    size: str = "2G"
    workdir: str = ""
    image: str = ""
    mountpoint: str = ""

    def __post_init__(self) -> None:
        if self.fstype not in MKFS:
            raise ValueError(f"unsupported fstype {self.fstype!r}")

    def __enter__(self) -> str:
        os.makedirs(self.tmpdir, exist_ok=True)
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
            _unmount(self.mountpoint)
        if self.image:
            _detach(self.image)
        if self.workdir and not _mounted(self.mountpoint):
            shutil.rmtree(self.workdir, ignore_errors=True)


def release(root: str) -> list[str]:
    """Unmount every mount below ``root`` and detach the loop devices of the
    ``loopfs-*/fs.img`` images there (what a killed run left); returns the mounts."""
    real = os.path.realpath(root)
    below = [m for m in _mounts() if m.startswith(real + os.sep)]
    for mnt in sorted(below, key=len, reverse=True):
        _unmount(mnt)
    for entry in sorted(os.listdir(real)) if os.path.isdir(real) else []:
        image = os.path.join(real, entry, "fs.img")
        if entry.startswith("loopfs-") and os.path.exists(image):
            _detach(image)
    return below


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
        with tempfile.TemporaryDirectory() as tmp, LoopFs(tmp, fstype, "512M"):
            pass
    except OSError as exc:
        return f"cannot mount a loop {fstype}: {exc}"
    return None
