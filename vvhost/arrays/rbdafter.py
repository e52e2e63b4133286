"""Work an RBD verb leaves for after its answer, done by one background thread.

    revert_commit ──(one index write: swap + retired:<old>)──▶ answer
          └─ later("revert:<op>", task) ──▶ thread: make the snapshot's next spare
                                              clone, bound the clone depth

Nothing here is needed for correctness: what a task would do is recorded in the
pool's index before the task is queued (the retired image), so a task that is
lost (a crash, a failure, the process stopping) is done by the reaper later.
Tasks run one at a time, in order; one with the key of a queued one replaces it.
A failing task is logged, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Task = Callable[[], object]


class Aftercare:
    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._queue: dict[str, Task] = {}
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def later(self, key: str, task: Task) -> None:
        """Run ``task`` after the current call returns (in the background)."""
        with self._cond:
            if self._closed:
                return  # the reaper does it
            self._queue.pop(key, None)
            self._queue[key] = task
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"rbd-after-{self.name}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued task ran; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Run what is queued, then stop; False if a task is still running."""
        done = self.drain(timeout)
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout if done else 0)
            return not thread.is_alive()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key = next(iter(self._queue))
                task = self._queue.pop(key)
                self._busy = True
            try:
                task()
            except Exception as exc:  # the reaper does it later; the thread must live on
                log.warning("array %s: %s left for the reaper: %s", self.name, key, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
