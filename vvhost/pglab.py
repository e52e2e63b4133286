"""A private PostgreSQL 15 server under one directory, for tests and benchmarks.

``initdb`` then ``postgres`` itself (no ``pg_ctl``: the postmaster is our child,
so it is stopped by its PID), both as the ``postgres`` user when we are root
(PostgreSQL refuses to run as root).  Clients reach it over a unix socket in
``workdir/run`` (and, with ``tcp=True``, on 127.0.0.1 at ``port``)::

    workdir/                 made by mkdtemp (mode 0755: postgres traverses it)
      data/                  the cluster (initdb -A trust --no-sync)
      run/.s.PGSQL.PORT      the unix socket
      pids/postgres.pid      see vvhost.labpids (a crashed run is reaped by PID)
      postgres.log

Tests run without fsync; commits never wait for the WAL flush unless
``synchronous_commit=True`` (SQLite's WAL with ``synchronous=NORMAL`` does not
wait either: a power cut may lose the last commits, never corrupt).
Each test gets its own database (``create_database`` / ``drop_database``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from types import TracebackType

from . import labpids
from .errors import InternalError

BINDIR = "/usr/lib/postgresql/15/bin"
USER = "postgres"


def capability() -> str | None:
    """Why no private PostgreSQL can run here (None: it can)."""
    for tool in ("initdb", "postgres"):
        if not os.access(os.path.join(BINDIR, tool), os.X_OK):
            return f"{BINDIR}/{tool} is missing (Debian package postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"no {USER} user to run the server as"
    return None


@dataclass
class PgLab:
    workdir: str = ""  # "" : a new directory under the system temporary directory
    port: int = 0  # 0: a free one
    tcp: bool = False
    fsync: bool = False  # tests: off (a crash loses the lab anyway)
    synchronous_commit: bool = False  # off: like SQLite's WAL + synchronous=NORMAL
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _made_dir: bool = field(default=False, init=False, repr=False)

    # -- paths and addresses -------------------------------------------------------------
    @property
    def data(self) -> str:
        return os.path.join(self.workdir, "data")

    @property
    def sockdir(self) -> str:
        return os.path.join(self.workdir, "run")

    @property
    def piddir(self) -> str:
        return os.path.join(self.workdir, "pids")

    @property
    def log(self) -> str:
        return os.path.join(self.workdir, "postgres.log")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3, over the unix socket)."""
        return f"postgresql+psycopg://{USER}@/{database}?host={self.sockdir}&port={self.port}"

    def tcp_url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    # -- life ----------------------------------------------------------------------------
    def __enter__(self) -> PgLab:
        return self.start()

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> PgLab:
        reason = capability()
        if reason:
            raise InternalError(detail=f"cannot start PostgreSQL: {reason}")
        if not self.workdir:
            self.workdir = tempfile.mkdtemp(prefix="vvhost-pg-")
            self._made_dir = True
        if not self.port:
            from .daemon import free_port

            self.port = free_port()
        try:
            self._prepare()
            self._initdb()
            self._spawn()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self) -> None:
        os.chmod(self.workdir, 0o755)
        for path in (self.data, self.sockdir, self.piddir):
            os.makedirs(path, exist_ok=True)
        for path in (self.data, self.sockdir):
            self._give(path)
        open(self.log, "ab").close()
        self._give(self.log)

    def _give(self, path: str) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        argv = [
            f"{BINDIR}/initdb",
            "-D",
            self.data,
            "-A",
            "trust",
            "-U",
            USER,
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        user = self._user()
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=self.workdir,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            raise InternalError(detail=f"initdb failed: {' '.join(tail)}")

    def _argv(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1" if self.tcp else "",
            "unix_socket_directories": self.sockdir,
            "max_connections": "200",
            "shared_buffers": "64MB",
        }
        if not self.fsync:
            settings.update(fsync="off", full_page_writes="off")
        if not self.synchronous_commit:
            settings.update(synchronous_commit="off")
        argv = [f"{BINDIR}/postgres", "-D", self.data, "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _spawn(self) -> None:
        self._proc = labpids.spawn(
            self.piddir, "postgres", self._argv(), self.log, self.workdir, user=self._user()
        )

    def _user(self) -> str | None:
        return USER if os.geteuid() == 0 else None

    def _wait_ready(self, timeout: float) -> None:
        sock = os.path.join(self.sockdir, f".s.PGSQL.{self.port}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise InternalError(detail=f"postgres exited at start; see {self.log}")
            if os.path.exists(sock) and self._accepts():
                return
            time.sleep(0.05)
        raise InternalError(detail=f"postgres not ready after {timeout:.0f} s; see {self.log}")

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host=self.sockdir, port=self.port, user=USER, dbname="postgres", connect_timeout=2
            ):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self, grace: float = 15.0) -> None:
        """Fast shutdown (SIGINT to the postmaster, by PID), then SIGKILL; remove the files."""
        proc, self._proc = self._proc, None
        if proc is not None:
            labpids.stop(self.piddir, "postgres", proc, grace, sig=signal.SIGINT)
        if self._made_dir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- databases -----------------------------------------------------------------------
    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host=self.sockdir, port=self.port, user=USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str) -> str:
        """Make database ``name`` (a plain identifier); returns its URL."""
        _check_ident(name)
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending its remaining connections first."""
        _check_ident(name)
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_ident(name: str) -> None:
    if not name or not all(c.isalnum() or c == "_" for c in name) or len(name) > 63:
        raise InternalError(detail=f"not a database name: {name!r}")
