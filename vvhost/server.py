"""``vvhost serve``: the control plane daemon on a unix socket.

STATE_DIR/
  catalog.db (+ -wal, -shm)   the catalog (SQLite, WAL)
  serve.lock                   flock held while a daemon owns the state dir
  arrays/local/vvols/          the default ``dir`` array
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from typing import IO

import uvicorn

from .api.app import create_app
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


def serve(
    state_dir: str,
    socket_path: str,
    db_url: str | None = None,
    log_level: str = "warning",
    keep_endpoints: bool = False,
) -> None:
    lock = lock_state_dir(state_dir)
    service = Service(Config.from_env(state_dir, db_url))
    try:
        service.start()
        sock = bind_unix(socket_path)
        try:
            config = uvicorn.Config(
                create_app(service),
                log_level=log_level,
                access_log=False,
                timeout_graceful_shutdown=10,
            )
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
    finally:
        service.close(keep_endpoints=keep_endpoints)
        lock.close()
