"""Known byte patterns written into volumes and checked afterwards.

A pattern is a label and a list of 64 KiB-aligned chunk offsets; each chunk is
filled with bytes derived from (label, offset) so a misplaced chunk is caught.
"""

from __future__ import annotations

import hashlib
import os

CHUNK = 64 << 10


def chunk_bytes(label: str, offset: int, size: int = CHUNK) -> bytes:
    seed = hashlib.sha256(f"{label}:{offset}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Patterns:
    def write(self, path: str, label: str, offsets: list[int], size: int = CHUNK) -> None:
        with open(path, "r+b") as fh:
            for off in offsets:
                fh.seek(off)
                fh.write(chunk_bytes(label, off, size))
            fh.flush()
            os.fsync(fh.fileno())

    def check(self, path: str, label: str, offsets: list[int], size: int = CHUNK) -> None:
        with open(path, "rb") as fh:
            for off in offsets:
                fh.seek(off)
                got = fh.read(size)
                assert got == chunk_bytes(label, off, size), (
                    f"{path}: chunk at {off} is not {label}"
                )

    @staticmethod
    def sha(path: str) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()
