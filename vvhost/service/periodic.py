"""A background thread of ``vvhost serve`` that does one job every so often.

``Periodic(name, interval, tick)`` calls ``tick()`` every ``interval`` seconds,
sooner when ``wake()`` is called, until ``stop()``.  A tick that fails is logged
and the next one tries again: no error ends the thread, so one failing array or
host never stops the control plane's care of the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..errors import VvhostError

log = logging.getLogger(__name__)


class Periodic:
    def __init__(
        self, name: str, interval: float, tick: Callable[[], None], join: float = 10.0
    ) -> None:
        self.name = name
        self.interval = interval
        self.tick = tick
        self.join = join
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Tick now instead of at the end of the interval."""
        self._woken.set()

    def stop(self) -> None:
        self._stop.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join)
            self._thread = None

    def _run(self) -> None:
        while True:
            self._woken.wait(self.interval)
            self._woken.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except VvhostError as exc:
                log.warning("%s: %s", self.name, exc.message)
            except Exception:  # noqa: BLE001 - logged whole; the next tick tries again
                log.exception("%s failed", self.name)
