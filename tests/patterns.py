"""Known byte patterns written into volumes and checked afterwards.

A pattern is a label and a list of 64 KiB-aligned chunk offsets; each chunk is
filled with bytes derived from (label, offset) so a misplaced chunk is caught.

A volume is a file path, or a vvol as ``vvol show`` answers it: its ``path``
on ``dir`` arrays, its ``where`` (``pool/namespace/image@snap``) on RBD arrays,
opened with the admin identity of the test cluster (``Patterns.ceph``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from vvhost import fsutil

CHUNK = 64 << 10

Target = str | dict[str, Any]


def chunk_bytes(label: str, offset: int, size: int = CHUNK) -> bytes:
    seed = hashlib.sha256(f"{label}:{offset}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class _Volume(Protocol):
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...


class _File:
    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def size(self) -> int:
        return os.fstat(self.fh.fileno()).st_size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fh.fileno(), length, offset)

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fh.fileno(), data, offset)

    def discard(self, offset: int, length: int) -> None:
        fsutil.zero_range(self.fh.fileno(), offset, length)  # punches a hole


class _Image:
    def __init__(self, image: Any) -> None:
        self.image = image

    def size(self) -> int:
        return int(self.image.size())

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.image.read(offset, min(length, max(0, self.size() - offset))))

    def write(self, offset: int, data: bytes) -> None:
        self.image.write(data, offset)

    def discard(self, offset: int, length: int) -> None:
        self.image.discard(offset, length)


def rbd_spec(where: str) -> tuple[str, str, str, str | None]:
    """``pool[/namespace]/image[@snap]`` -> (pool, namespace, image, snap)."""
    spec, _, snap = where.partition("@")
    parts = spec.split("/")
    pool, ns, image = (parts[0], "", parts[1]) if len(parts) == 2 else parts
    return pool, ns, image, snap or None


class Patterns:
    ceph: tuple[str, str] | None = None  # (ceph.conf, admin keyring) of the test cluster

    def where(self, target: Target) -> str:
        if isinstance(target, str):
            return target
        return target.get("path") or target["where"]

    def is_file(self, target: Target) -> bool:
        return self.where(target).startswith("/")

    @contextmanager
    def open(self, target: Target, writable: bool = False) -> Iterator[_Volume]:
        where = self.where(target)
        if where.startswith("/"):
            with open(where, "r+b" if writable else "rb") as fh:
                yield _File(fh)
                if writable:
                    fh.flush()
                    os.fsync(fh.fileno())
            return
        import rados
        import rbd

        assert self.ceph is not None, f"{where} is on RBD: the test has no Ceph cluster"
        conf, keyring = self.ceph
        pool, ns, image, snap = rbd_spec(where)
        with rados.Rados(conffile=conf, conf={"keyring": keyring}) as cluster:
            with cluster.open_ioctx(pool) as ioctx:
                ioctx.set_namespace(ns)
                try:  # at its head, then at the snapshot: opening at a snapshot can abort librbd
                    img = rbd.Image(ioctx, image, read_only=not writable)
                except rbd.ImageNotFound:
                    raise FileNotFoundError(where) from None
                with img:
                    if snap is not None:
                        img.set_snap(snap)
                    yield _Image(img)
                    if writable:
                        img.flush()

    def write(self, target: Target, label: str, offsets: list[int], size: int = CHUNK) -> None:
        with self.open(target, writable=True) as vol:
            for off in offsets:
                vol.write(off, chunk_bytes(label, off, size))

    def check(self, target: Target, label: str, offsets: list[int], size: int = CHUNK) -> None:
        with self.open(target) as vol:
            for off in offsets:
                got = vol.read(off, size)
                assert got == chunk_bytes(label, off, size), (
                    f"{self.where(target)}: chunk at {off} is not {label}"
                )

    def read(self, target: Target, offset: int, length: int) -> bytes:
        with self.open(target) as vol:
            return vol.read(offset, length)

    def discard(self, target: Target, offset: int, length: int) -> None:
        """Deallocate a range (it reads as zeros afterwards)."""
        with self.open(target, writable=True) as vol:
            vol.discard(offset, length)

    def exists(self, target: Target) -> bool:
        try:
            with self.open(target):
                return True
        except FileNotFoundError:
            return False

    def size(self, target: Target) -> int:
        with self.open(target) as vol:
            return vol.size()

    @staticmethod
    def sha(path: str) -> str:
        """SHA-256 of a file."""
        return Patterns().digest(path)

    def digest(self, target: Target) -> str:
        """SHA-256 of a volume's whole content."""
        h = hashlib.sha256()
        with self.open(target) as vol:
            size = vol.size()
            for off in range(0, size, 1 << 22):
                h.update(vol.read(off, min(1 << 22, size - off)))
        return h.hexdigest()
