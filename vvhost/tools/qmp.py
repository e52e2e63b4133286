"""A small synchronous QMP client over ``qemu.qmp`` (unix socket).

On the wire, one JSON object a line in each direction::

    <- {"QMP": {"version": ..., "capabilities": [...]}}       greeting
    -> {"execute": "qmp_capabilities"}                        (done by connect)
    -> {"execute": "block-export-del", "arguments": {"id": "e1"}, "id": "__qmp#00001"}
    <- {"event": "BLOCK_EXPORT_DELETED", "data": {"id": "e1"}, "timestamp": {...}}
    <- {"return": {}, "id": "__qmp#00001"}        or  {"error": {"class": ..., "desc": ...}}

Events may arrive before, between or after replies; they are kept (the last
``EVENT_BACKLOG``) until :meth:`Qmp.wait_event` takes them.

Each ``Qmp`` runs its own private asyncio loop, so it works from any thread that
is not itself running an event loop (from async code, call it via a worker
thread); calls on one ``Qmp`` are serialised by a lock. A QMP monitor chardev
serves one client at a time: a second connect to the same socket waits for a
greeting that never comes, and fails after ``timeout``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

from . import EndpointError

EVENT_BACKLOG = 256

_T = TypeVar("_T")


def _matches(event: Mapping[str, Any], name: str, match: Mapping[str, Any] | None) -> bool:
    if event.get("event") != name:
        return False
    data = event.get("data") or {}
    return all(data.get(key) == value for key, value in (match or {}).items())


class Qmp:
    """One QMP connection; ``close()`` is final (make a new ``Qmp`` to reconnect)."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(f"qmp:{socket_path}")
        self._lock = threading.Lock()
        self._events: deque[dict[str, Any]] = deque(maxlen=EVENT_BACKLOG)

    def __enter__(self) -> Qmp:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _sync(self, what: Awaitable[_T], timeout: float | None) -> _T:
        return self._loop.run_until_complete(asyncio.wait_for(what, timeout))

    def connect(self, retry_for: float = 5.0) -> None:
        """Connect and negotiate, retrying for ``retry_for`` s while the socket is not
        up, refuses connections, or accepted one but sent no greeting (a daemon that
        made its socket and is still starting queues the connection; each attempt
        waits ``timeout`` s for the greeting, then hangs up and tries again)."""
        deadline = time.monotonic() + retry_for
        with self._lock:
            while True:
                reason = "no such socket"
                if os.path.exists(self.socket_path):  # else skip qemu.qmp's error log
                    try:
                        self._sync(self._client.connect(self.socket_path), self.timeout)
                        return
                    except TimeoutError:  # the client is back to IDLE either way
                        reason = f"no greeting after {self.timeout:g}s"
                    except (ConnectError, OSError) as exc:
                        reason = str(exc)
                if time.monotonic() >= deadline:
                    raise EndpointError(tool="qmp", detail=f"connect {self.socket_path}: {reason}")
                time.sleep(0.05)

    def _drain(self) -> None:
        self._events.extend(dict(event) for event in self._client.events.clear())

    def cmd(self, name: str, /, **args: Any) -> Any:
        """Execute ``name`` with ``args`` (pass dashed QMP names as ``**{"node-name": x}``)."""
        with self._lock:
            try:
                return self._sync(self._client.execute(name, args or None), self.timeout)
            except ExecuteError as exc:
                detail = f"{name}: {exc.error_class}: {exc}"
            except TimeoutError:
                detail = f"{name}: no reply after {self.timeout:g}s"
            except (QMPError, OSError) as exc:
                detail = f"{name}: {type(exc).__name__}: {exc}"
            finally:
                self._drain()
        raise EndpointError(tool="qmp", detail=detail, command=name)

    def cmd_many(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Send several commands without waiting for each reply (QMP answers them in
        order); return each reply, or the EndpointError for a command that failed."""

        async def send_all() -> list[Any]:
            pending = (self._client.execute(name, args or None) for name, args in calls)
            return await asyncio.gather(*pending, return_exceptions=True)

        with self._lock:
            try:
                replies = self._sync(send_all(), self.timeout + len(calls) * 0.1)
            except TimeoutError:
                replies = [TimeoutError()] * len(calls)
            finally:
                self._drain()
        out: list[Any] = []
        for (name, _args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, BaseException):
                detail = (
                    f"{name}: {reply.error_class}: {reply}"
                    if isinstance(reply, ExecuteError)
                    else f"{name}: {type(reply).__name__}: {reply}"
                )
                reply = EndpointError(tool="qmp", detail=detail, command=name)
            out.append(reply)
        return out

    def wait_event(
        self, name: str, match: Mapping[str, Any] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Return (and consume) the first event ``name`` whose data holds ``match``.

        Events that arrived earlier, e.g. while the command that causes the event
        was running, count. Other events stay queued for later waits.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                self._drain()
                for event in self._events:
                    if _matches(event, name, match):
                        self._events.remove(event)
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EndpointError(
                        tool="qmp", detail=f"no {name} event {dict(match or {})} after {timeout:g}s"
                    )
                try:
                    self._events.append(dict(self._sync(self._client.events.get(), left)))
                except TimeoutError:
                    continue

    def discard_events(self, name: str, match: Mapping[str, Any] | None = None) -> None:
        """Forget queued events ``name`` matching ``match`` (before causing a fresh one)."""
        with self._lock:
            self._drain()
            for event in [e for e in self._events if _matches(e, name, match)]:
                self._events.remove(event)

    def close(self) -> None:
        """Disconnect and release the loop; safe to call twice."""
        with self._lock:
            if self._loop.is_closed():
                return
            try:
                self._sync(self._client.disconnect(), self.timeout)
            except Exception:  # the peer went away (EOFError, ...): nothing left to close
                pass
            finally:
                self._loop.close()
