"""PostgreSQL fixtures: one private server per test session, a database per test.

- ``pg_server`` (session): a :class:`vvhost.pglab.PgLab` (PostgreSQL 15 from
  ``./run.sh setup``, run as ``postgres`` under a new /tmp/vvhost-pg-* directory,
  unix socket only, no fsync), stopped by PID at the end of the session.  Labs
  of earlier sessions whose pytest process died are stopped by PID first.
- ``pg_url``: the SQLAlchemy URL of a fresh database (``CREATE DATABASE``),
  dropped after the test.
- ``db_url``: the catalog of the contract tests' control plane, parametrized:
  ``sqlite`` (None: the SQLite file in the state directory) and ``pg``.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vvhost.pglab import PgLab


def _reap_old_labs() -> None:
    from vvhost import labpids

    for workdir in glob.glob(os.path.join(tempfile.gettempdir(), "vvhost-pg-*")):
        labpids.reap_orphans([workdir])
        piddir = os.path.join(workdir, "pids")
        idle = os.path.isdir(piddir) and not os.listdir(piddir)
        if idle and time.time() - os.path.getmtime(piddir) > 600:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgLab]:
    from vvhost.pglab import PgLab, capability

    reason = capability()
    if reason:
        pytest.fail(f"no private PostgreSQL on this machine: {reason}")
    _reap_old_labs()
    with PgLab() as lab:
        yield lab


@pytest.fixture
def pg_url(pg_server: PgLab) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "pg"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))
