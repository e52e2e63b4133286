"""Where an array is, and whether it is still the array vvhost added.

    ARRAY_PATH/
      .vvhost-array      the marker: {"array_id", "name", "fs_id", "created"}
      vvols/...          the backend's files

``array add`` writes the marker (only into an empty or new directory) and
records the filesystem's id (``uuid:<fs uuid>`` when the mount source has one,
else ``fsid:<type>:<statvfs f_fsid>``).  Before doing anything there, the
backend checks that the marker is present, names the same array and that the
directory still sits on the same filesystem: an unmounted array (an empty
mountpoint on the root filesystem) or someone else's directory is *offline*,
never silently recreated.

Paths are compared twice, both ways: by real path (symlinks, ``..``, trailing
slashes) and by (device, inode) of the directory and its ancestors (bind
mounts, hard-to-spot aliases).  Everything here is pure: paths in, a bool or a
reason out; callers decide what to refuse.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from dataclasses import asdict, dataclass

MARKER = ".vvhost-array"


@dataclass(frozen=True)
class Marker:
    array_id: str
    name: str
    fs_id: str
    created: float


# -- overlap --------------------------------------------------------------------------------


def _key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _chain(path: str) -> list[tuple[int, int]]:
    """(device, inode) of ``path`` (if it exists) and of every existing ancestor."""
    keys: list[tuple[int, int]] = []
    current = os.path.realpath(path)
    while True:
        key = _key(current)
        if key is not None:
            keys.append(key)
        parent = os.path.dirname(current)
        if parent == current:
            return keys
        current = parent


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def relation(a: str, b: str) -> str | None:
    """How ``a`` relates to ``b``: ``"same"``, ``"inside"`` (a lies in b),
    ``"contains"`` (b lies in a) or ``None`` when they are apart."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    if ra == rb:
        return "same"
    if _inside(ra, rb):
        return "inside"
    if _inside(rb, ra):
        return "contains"
    ka, kb = _key(ra), _key(rb)
    if ka is not None and ka == kb:
        return "same"
    if kb is not None and kb in _chain(ra):
        return "inside"
    if ka is not None and ka in _chain(rb):
        return "contains"
    return None


def same_or_nested(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are one directory or one lies inside the other."""
    return relation(a, b) is not None


def overlap_reason(path: str, other: str, what: str) -> str | None:
    """A phrase saying how ``path`` overlaps ``other`` (described as ``what``)."""
    rel = relation(path, other)
    if rel is None:
        return None
    phrase = {"same": "is the same directory as", "inside": "lies inside", "contains": "contains"}
    return f"{phrase[rel]} {what} ({other})"


# -- filesystem identity ---------------------------------------------------------------------

_fs_cache: dict[int, str] = {}
_fs_guard = threading.Lock()


def _mount_of(path: str) -> tuple[str, str, str] | None:
    """(mount point, fs type, source) of the mount holding ``path``."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        point = fields[4].replace("\\040", " ")
        if _inside(real, point) and (best is None or len(point) >= len(best[0])):
            best = (point, tail[0], tail[1])
    return best


def _blkid_uuid(source: str) -> str | None:
    try:
        done = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "UUID", source],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = done.stdout.strip()
    return value or None


def fs_identity(path: str) -> str:
    """A stable id of the filesystem holding ``path`` (which must exist)."""
    st = os.stat(path)
    with _fs_guard:
        cached = _fs_cache.get(st.st_dev)
    if cached is not None:
        return cached
    mount = _mount_of(path)
    fstype = mount[1] if mount else "unknown"
    ident = None
    if mount and mount[2].startswith("/dev/"):
        uuid = _blkid_uuid(mount[2])
        ident = f"uuid:{uuid}" if uuid else None
    if ident is None:
        ident = f"fsid:{fstype}:{os.statvfs(path).f_fsid:x}"
    with _fs_guard:
        _fs_cache[st.st_dev] = ident
    return ident


# -- the marker ------------------------------------------------------------------------------


def read_marker(path: str) -> Marker | None:
    """The marker in array directory ``path``; None when absent or unreadable."""
    try:
        with open(os.path.join(path, MARKER)) as f:
            data = json.load(f)
        return Marker(
            array_id=str(data["array_id"]),
            name=str(data["name"]),
            fs_id=str(data["fs_id"]),
            created=float(data["created"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(path: str, array_id: str, name: str) -> Marker:
    """Write (atomically, durably) the marker of array ``array_id`` into ``path``."""
    marker = Marker(array_id=array_id, name=name, fs_id=fs_identity(path), created=time.time())
    final = os.path.join(path, MARKER)
    tmp = final + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(marker), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return marker


def remove_marker(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(path, MARKER))


def offline_reason(path: str, array_id: str, fs_id: str | None) -> str | None:
    """Why ``path`` is not array ``array_id`` right now (None: it is)."""
    if not os.path.isdir(path):
        return f"{path} does not exist (not mounted?)"
    marker = read_marker(path)
    if marker is None:
        return f"{path} has no array marker (not mounted?)"
    if marker.array_id != array_id:
        return f"{path} holds the marker of another array ({marker.name}, {marker.array_id})"
    try:
        current = fs_identity(path)
    except OSError as exc:
        return f"cannot look at {path}: {exc.strerror}"
    expected = fs_id or marker.fs_id
    if current != expected:
        return f"{path} is on filesystem {current}, the array was added on {expected}"
    return None


def _empty_lost_found(path: str, name: str) -> bool:
    """A fresh filesystem's own ``lost+found`` does not make its root non-empty."""
    full = os.path.join(path, name)
    return name == "lost+found" and os.path.isdir(full) and not os.listdir(full)


def foreign_reason(path: str) -> str | None:
    """Why ``path`` cannot become a new array: it holds files that are not ours."""
    if not os.path.exists(path):
        return None
    if not os.path.isdir(path):
        return "is not a directory"
    marker = read_marker(path)
    if marker is not None:
        return (
            f"holds the marker of array {marker.name} ({marker.array_id}), which this "
            "control plane does not know: it is not adopted"
        )
    if [n for n in os.listdir(path) if not _empty_lost_found(path, n)]:
        return "is not empty and is not an array of this control plane: it is not adopted"
    return None
