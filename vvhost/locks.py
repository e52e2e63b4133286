"""Per-object locks taken in a fixed (sorted) order, so two operations never deadlock.

A lock exists only while somebody holds or waits for it, so the table does not
grow with every vvol the daemon has ever touched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class LockTable:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    def _take(self, key: str) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(key) or (threading.Lock(), 0)
            self._locks[key] = (lock, users + 1)
        lock.acquire()
        return lock

    def _give(self, key: str) -> None:
        with self._guard:
            lock, users = self._locks[key]
            lock.release()
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)

    @contextmanager
    def hold(self, keys: Iterable[str | None]) -> Iterator[None]:
        ordered = sorted({k for k in keys if k})
        taken: list[str] = []
        try:
            for key in ordered:
                self._take(key)
                taken.append(key)
            yield
        finally:
            for key in reversed(taken):
                self._give(key)
