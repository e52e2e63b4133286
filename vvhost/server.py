"""``vvhost serve``: the control plane daemon on a unix socket.

STATE_DIR/
  catalog.db (+ -wal, -shm)   the catalog (SQLite, WAL)
  serve.lock                   flock held while a daemon owns the state dir
  arrays/local/vvols/          the default ``dir`` array

Shutdown on SIGTERM or SIGINT (the handlers are ours from the first line on;
the ASGI servers are told not to touch signals, so nothing re-raises them):

  1. the unix and TCP listeners stop (in-flight requests finish)
  2. the unix socket is removed
  3. the endpoint daemons stop (left running with --keep-endpoints)
  4. the catalog is closed, the state dir lock released, exit status 0
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

import uvicorn

from .api.app import bearer, create_app
from .errors import AlreadyExists, InvalidInput
from .service import Config, Service


def bind_unix(path: str, mode: int = 0o600) -> socket.socket:
    """Bind a listening unix socket, replacing a stale one but never a live one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise AlreadyExists(kind="control plane socket", ref=path)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


def lock_state_dir(state_dir: str) -> IO[str]:
    os.makedirs(state_dir, exist_ok=True)
    fh = open(os.path.join(state_dir, "serve.lock"), "a+", encoding="utf-8")  # noqa: SIM115 (held)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise InvalidInput(detail=f"another vvhost serve owns {state_dir}") from None
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


@dataclass(frozen=True)
class Listen:
    """The optional TCP listener: HOST:PORT with a TLS certificate and key."""

    host: str
    port: int
    cert: str
    key: str

    @classmethod
    def parse(cls, address: str, cert: str | None, key: str | None) -> Listen:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(detail=f"--listen {address!r} is not HOST:PORT")
        if not cert or not key:
            raise InvalidInput(detail="--listen needs --tls-cert and --tls-key: TCP is TLS only")
        for path in (cert, key):
            if not os.path.isfile(path):
                raise InvalidInput(detail=f"{path} is not a file")
        return cls(host.strip("[]"), int(port), cert, key)


@dataclass(frozen=True)
class ReplicaOptions:
    """``serve --node/--replica/--lease/--heartbeat``: None keeps the default."""

    node: str | None = None
    replica: str | None = None
    lease: float | None = None
    heartbeat: float | None = None

    def apply(self, config: Config, listen: Listen | None) -> Config:
        r = config.replica
        r = dataclasses.replace(
            r,
            node=self.node or r.node,
            replica=self.replica or r.replica,
            lease=r.lease if self.lease is None else self.lease,
            heartbeat=r.heartbeat if self.heartbeat is None else self.heartbeat,
            url=f"https://{listen.host}:{listen.port}" if listen else r.url,
        )
        return dataclasses.replace(config, replica=r.checked())


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :class:`Shutdown`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Shutdown:
    """SIGTERM/SIGINT handlers that ask every registered server to exit; a second
    signal makes them stop waiting for in-flight requests."""

    signals: list[int] = field(default_factory=list)
    servers: list[uvicorn.Server] = field(default_factory=list)

    def install(self) -> Shutdown:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle)
        return self

    def handle(self, sig: int, _frame: FrameType | None) -> None:
        self.signals.append(sig)
        for server in self.servers:
            server.force_exit = server.should_exit
            server.should_exit = True

    def add(self, server: uvicorn.Server) -> uvicorn.Server:
        self.servers.append(server)
        server.should_exit = bool(self.signals)
        return server

    @property
    def requested(self) -> bool:
        return bool(self.signals)


def serve(
    state_dir: str,
    socket_path: str,
    db_url: str | None = None,
    log_level: str = "warning",
    keep_endpoints: bool = False,
    listen: Listen | None = None,
    reconcile_interval: float | None = None,
    replica: ReplicaOptions | None = None,
) -> None:
    """Serve the API on the unix socket (admin) and, with ``listen``, on TCP+TLS
    (bearer tokens) from a second thread; stop both on SIGTERM/SIGINT, then the
    endpoint daemons (unless ``keep_endpoints``), and return."""
    shutdown = Shutdown().install()
    settings = (replica or ReplicaOptions()).apply(Config.from_env(state_dir, db_url), listen)
    lock = lock_state_dir(state_dir)
    if reconcile_interval is not None:
        settings = dataclasses.replace(settings, reconcile_interval=reconcile_interval)
    service = Service(settings)
    try:
        service.start()
        if shutdown.requested:
            return
        sock = bind_unix(socket_path)
        tcp: uvicorn.Server | None = None
        thread: threading.Thread | None = None
        try:
            if listen is not None:
                tcp = _Server(
                    uvicorn.Config(
                        create_app(service, bearer(service)),
                        host=listen.host,
                        port=listen.port,
                        ssl_certfile=listen.cert,
                        ssl_keyfile=listen.key,
                        log_level=log_level,
                        access_log=False,
                        timeout_graceful_shutdown=10,
                    )
                )
                shutdown.add(tcp)
                thread = threading.Thread(target=tcp.run, name="tcp-api", daemon=True)
                thread.start()
            config = uvicorn.Config(
                create_app(service),
                log_level=log_level,
                access_log=False,
                timeout_graceful_shutdown=10,
            )
            shutdown.add(_Server(config)).run(sockets=[sock])
        finally:
            if tcp is not None and thread is not None:
                tcp.should_exit = True
                thread.join(15)
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
    finally:
        service.close(keep_endpoints=keep_endpoints)
        lock.close()
