"""The background threads of ``vvhost serve``: a failing tick never ends them,
wake() ticks at once, stop() ends the thread."""

from __future__ import annotations

import threading
import time

from vvhost.errors import NotFound
from vvhost.service.periodic import Periodic


def test_failures_are_survived_and_wake_ticks_at_once() -> None:
    ticks: list[int] = []
    third = threading.Event()

    def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 1:
            raise RuntimeError("a bug in one round")
        if len(ticks) == 2:
            raise NotFound(kind="array", ref="gone")
        third.set()

    p = Periodic("test-periodic", 3600.0, tick)  # only wake() can make it tick here
    p.start()
    try:
        deadline = time.monotonic() + 5
        while not third.is_set() and time.monotonic() < deadline:
            p.wake()
            third.wait(0.1)
        assert third.is_set(), ticks
        assert ticks[:3] == [0, 1, 2]
    finally:
        p.stop()
    assert not [t for t in threading.enumerate() if t.name == "test-periodic"]
