"""Ceph for the benchmarks: a private cluster with one pool, and admin access to
the volumes a benchmark checks, whether they are files or RBD images.

    ceph_pool(work)            a private single-node cluster (stopped by PID after)
                               and a fresh RBD pool: yields (lab, pool)
    Volumes(lab)               admin access to ``pool[/namespace]/image[@snap]``
                               (``lab`` None: files only)
      write_at(where, off, b)  write bytes into a file or an image
      image(where)             a librbd image, read-only unless ``writable``
      write_spread(where, ...) 4 MiB blocks of a known pattern through librbd
      digest(where)            equal to ``common.content_digest`` of a file that
                               reads the same: file and RBD points compare
      qemu_uri(where)          the same image for ``qemu-img`` (admin, the lab's conf)
      rbd_cli(*args)           the ``rbd`` CLI as admin
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vvhost.cephlab import CephLab

from .common import BLOCK, MiB, content_digest, fill_block

POOL = "bench"


@contextmanager
def ceph_pool(work: str) -> Iterator[tuple[CephLab, str]]:
    """A private cluster under ``work/ceph`` with pool ``bench``; stopped afterwards."""
    with CephLab(os.path.join(work, "ceph")) as lab:
        lab.create_pool(POOL)
        yield lab, POOL


def split(where: str) -> tuple[str, str, str, str | None]:
    """``pool[/namespace]/image[@snap]`` -> (pool, namespace, image, snap)."""
    spec, _, snap = where.partition("@")
    parts = spec.split("/")
    pool, ns, name = (parts[0], "", parts[1]) if len(parts) == 2 else parts
    return pool, ns, name, snap or None


def where_of(info: dict[str, Any]) -> str:
    """A vvol's file path (``dir`` arrays) or RBD spec (``rbd`` arrays)."""
    return str(info.get("path") or info["where"])


class Volumes:
    """Admin access to the volumes of a benchmark: files and RBD images alike."""

    def __init__(self, lab: CephLab | None = None) -> None:
        self._lab = lab

    @property
    def lab(self) -> CephLab:
        if self._lab is None:
            raise RuntimeError("an RBD image, but the benchmark has no Ceph cluster")
        return self._lab

    def rbd_cli(self, *args: str) -> str:
        cmd = ["rbd", "-c", self.lab.conf, "--keyring", self.lab.admin_keyring, *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    def qemu_uri(self, where: str) -> str:
        pool, ns, name, snap = split(where)
        spec = f"{pool}/{ns}/{name}" if ns else f"{pool}/{name}"
        return f"rbd:{spec}{'@' + snap if snap else ''}:conf={self.lab.conf}"

    @contextmanager
    def image(self, where: str, writable: bool = False) -> Iterator[Any]:
        import rados
        import rbd

        pool, ns, name, snap = split(where)
        with rados.Rados(conffile=self.lab.conf, conf={"keyring": self.lab.admin_keyring}) as r:
            with r.open_ioctx(pool) as ioctx:
                ioctx.set_namespace(ns)
                with rbd.Image(ioctx, name, snapshot=snap, read_only=not writable) as img:
                    yield img

    def write_at(self, where: str, offset: int, data: bytes) -> None:
        if where.startswith("/"):
            fd = os.open(where, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        with self.image(where, writable=True) as img:
            img.write(data, offset)
            img.flush()

    def write_spread(self, where: str, total: int, seed: int, offset: int = 0) -> None:
        """``total`` bytes in 4 MiB blocks, every other block, from ``offset``."""
        with self.image(where, writable=True) as img:
            for i in range(total // BLOCK):
                img.write(fill_block(seed, i), offset + 2 * i * BLOCK)
            img.flush()

    def digest(self, where: str) -> str:
        """What ``content_digest`` gives for a file of the same content: the size,
        then every non-zero 1 MiB block of the mapped extents with its offset."""
        if where.startswith("/"):
            return content_digest(where)
        h = hashlib.sha256()
        zero = bytes(MiB)
        with self.image(where) as img:
            size = img.size()
            h.update(size.to_bytes(8, "little"))
            extents: list[tuple[int, int]] = []
            img.diff_iterate(0, size, None, lambda o, n, e: extents.append((o, n)) if e else None)
            blocks = sorted({b for o, n in extents for b in range(o - o % MiB, o + n, MiB)})
            for block in blocks:
                data = bytes(img.read(block, min(MiB, size - block)))
                if data != zero[: len(data)]:
                    h.update(block.to_bytes(8, "little"))
                    h.update(data)
        return h.hexdigest()
