"""Do two directories overlap?  (A file endpoint's directory must not.)

    a overlaps b  <=>  a is b, a lies inside b, or b lies inside a

checked two ways, so neither symbolic links nor bind mounts hide an overlap:

    real paths   os.path.realpath of both (the part that exists resolved),
                 then one is a path prefix of the other
    inodes       (st_dev, st_ino) of one equals that of the other or of any
                 existing ancestor of the other (a bind mount of a directory
                 has the same device and inode wherever it appears)
"""

from __future__ import annotations

import os


def _ancestry(path: str) -> list[tuple[int, int]]:
    """(dev, ino) of ``path`` (if it exists) and of each existing ancestor, up to /."""
    out = []
    current = os.path.abspath(path)
    while True:
        try:
            st = os.stat(current)
            out.append((st.st_dev, st.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(current)
        if parent == current:
            return out
        current = parent


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inside(inner: str, outer: str) -> bool:
    """``inner`` is ``outer`` or lies under it."""
    ri, ro = os.path.realpath(inner), os.path.realpath(outer)
    if ri == ro or ri.startswith(ro.rstrip("/") + "/"):
        return True
    node = _inode(outer)
    return node is not None and node in _ancestry(inner)


def overlaps(a: str, b: str) -> bool:
    return _inside(a, b) or _inside(b, a)


def entries(path: str) -> list[str]:
    """The names in directory ``path`` (none when it does not exist yet)."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
