"""Per-object locks taken in a fixed (sorted) order, so two operations never deadlock."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class LockTable:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock

    @contextmanager
    def hold(self, keys: Iterable[str | None]) -> Iterator[None]:
        ordered = sorted({k for k in keys if k})
        taken: list[threading.Lock] = []
        try:
            for key in ordered:
                lock = self._lock(key)
                lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()
