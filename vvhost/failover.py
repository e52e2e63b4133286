"""Several control-plane URLs behind one client: which replica a request goes to,
and when a request that failed may be sent to the next one.

The rules (also in the README, "Several control-plane replicas"):

- A request is sent to the replica that answered last (at first: the first URL).
- It goes to the next URL when it certainly did NOT reach a server's application:
  the TCP connection was refused or timed out, the name did not resolve, the TLS
  handshake failed (a dead or half-dead replica), or no pooled connection became
  free.  httpx raises these before one byte of the request is written
  (:data:`NOT_SENT`), so any method is safe to send again.
- A replica may also answer 503 with the code ``replica-unavailable`` (shutting
  down, or no longer holding its lease): it says so before it starts the request,
  so any method is sent to the next URL.
- Once the request may have been written (the connection broke or timed out while
  sending it or while waiting for the answer), only reads (GET, HEAD, OPTIONS) are
  sent again: a POST, PUT, PATCH or DELETE may have been carried out by the replica
  that then died, and sending it again could do it twice (two vvols, a second
  snapshot) or fail misleadingly (not-found for a delete that succeeded).  Such a
  request ends with ``Unreachable`` saying it may have been carried out; the caller
  checks the state (``vvhost vvol show``, ``vvhost op show``) before trying again.
  A read is also sent on after any other 503 (an array or daemon offline at that
  replica): reads change nothing.
- A connection reset is the one case that looks alike both ways: on a kept-alive
  connection it may mean the replica died before the request or while running it.
  httpx drops pooled connections the server has closed before reusing one, so once
  a dead replica's FIN or RST has arrived the next request opens a new connection,
  is refused, and goes on; a reset (or "server disconnected") that surfaces after
  the request was written is treated as "may have been carried out".
- Any other answer a server gave (2xx, 4xx, 5xx) is final: it is returned.  A
  write answered with another 503 (``replica-fenced``: the replica lost its lease,
  possibly after part of the request; an array offline there) is returned too, but
  the next request starts at the next replica.
- When every URL failed without a final answer: ``Unreachable`` naming each URL and
  why, in one line (exit code 7); if some replica answered 503, that answer.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import InvalidInput, ReplicaUnavailable, Unreachable

# Failures raised before the request is written: safe to send again, to any URL.
NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Methods without effect: sent again even when the request may have reached a server.
READS = frozenset({"GET", "HEAD", "OPTIONS"})
# The 503 code a replica answers when it refuses a request before starting it.
REPLICA_UNAVAILABLE = ReplicaUnavailable.code
SCHEMES = ("https://", "http://", "unix://")


def split_servers(values: str | Iterable[str] | None) -> list[str]:
    """URLs from ``a,b`` and/or several values (``--server`` repeated, a config
    line, an environment variable): split on commas and blanks, duplicates and
    empty items dropped, order kept.  A URL without a known scheme is bad input."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for url in item.replace(",", " ").split():
            if not url.startswith(SCHEMES):
                raise InvalidInput(
                    detail=f"server {url!r} is not unix:///PATH, https://HOST:PORT or http://..."
                )
            url = url.rstrip("/")
            if url not in out:
                out.append(url)
    return out


@dataclass
class Endpoint:
    """One control-plane replica and the HTTP connection pool to it."""

    address: str
    http: httpx.Client
    # How it was opened (url, token, ca, timeout), so it can be opened again.
    spec: tuple[str, str | None, str | None, httpx.Timeout] | None = None

    def reopen(self) -> Endpoint | None:
        """A new endpoint with its own connections, if this one knows how."""
        return Endpoint.open(*self.spec) if self.spec else None

    @classmethod
    def open(cls, url: str, token: str | None, ca: str | None, timeout: httpx.Timeout) -> Endpoint:
        """``unix:///PATH`` (no token: the socket's permissions admit the caller)
        or ``https://HOST:PORT`` with a bearer token, ``ca`` verifying the server."""
        if url.startswith("unix://"):
            path = url[len("unix://") :]
            transport = httpx.HTTPTransport(uds=path)
            http = httpx.Client(transport=transport, base_url="http://vvhost", timeout=timeout)
            return cls(path, http, (url, token, ca, timeout))
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = httpx.Client(base_url=url, timeout=timeout, verify=verify, headers=headers)
        return cls(url, http, (url, token, ca, timeout))


def reason(exc: BaseException) -> str:
    """A failure's text in a few words, on one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _code(resp: httpx.Response) -> str:
    try:
        payload: Any = resp.json()
    except ValueError:
        return ""
    return str(payload.get("code", "")) if isinstance(payload, dict) else ""


@dataclass
class Failover:
    """Sends requests to the replica that answered last, moving on by the rules above."""

    endpoints: list[Endpoint]
    current: int = 0
    tried: list[str] = field(default_factory=list)  # failures of the last request

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise InvalidInput(detail="no control-plane URL given")

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self.current]

    @property
    def addresses(self) -> list[str]:
        return [ep.address for ep in self.endpoints]

    def close(self) -> None:
        for ep in self.endpoints:
            ep.http.close()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer of the first replica, from the current one on, that gives a
        final answer; ``Unreachable`` (or the last 503) if none does."""
        method = method.upper()
        count = len(self.endpoints)
        self.tried = []
        unavailable: httpx.Response | None = None
        for step in range(count):
            index = (self.current + step) % count
            ep = self.endpoints[index]
            try:
                resp = ep.http.request(method, path, **kwargs)
            except NOT_SENT as exc:
                self.tried.append(f"{ep.address}: {reason(exc)}")
                continue
            except httpx.TransportError as exc:
                if method in READS:
                    self.tried.append(f"{ep.address}: {reason(exc)}")
                    continue
                # It may have been carried out: never sent twice (see the module text).
                raise Unreachable(
                    address=ep.address,
                    detail=f"{reason(exc)} after the request was sent; it may have been "
                    f"carried out, so it was not sent again: check before retrying",
                ) from exc
            if resp.status_code == 503 and (method in READS or _code(resp) == REPLICA_UNAVAILABLE):
                self.tried.append(f"{ep.address}: HTTP 503 {_code(resp)}".rstrip())
                unavailable = resp
                continue
            # A final answer: this replica is asked first next time, unless it
            # answered 503 (lost its lease, an array offline there): then the next one.
            self.current = (index + 1) % count if resp.status_code == 503 else index
            return resp
        if unavailable is not None:
            return unavailable
        if count == 1:
            raise Unreachable(address=self.addresses[0], detail=self.tried[0].split(": ", 1)[1])
        raise Unreachable(
            address=f"any of {', '.join(self.addresses)}", detail="; ".join(self.tried)
        )
