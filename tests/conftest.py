"""Shared fixtures.

- ``fs_dir``: a fresh directory on ext4 (no reflink: the copy fallback) and on a
  loop-mounted XFS with reflink (skipped, with the reason, where the machine
  cannot loop-mount).
- ``service``: an in-process control plane on ``fs_dir``.
- ``api``: an API client against that service, in-process and over a real unix
  socket served by a ``vvhost serve`` child process: the contract tests run on both.
  Every answer it receives is checked against the server's OpenAPI document
  (``tests/openapicheck.py``).
- ``ceph_cluster``, ``ceph_pool``: a private Ceph cluster per session and a
  fresh RBD pool per test (``tests/cephfixtures.py``).
- ``db_url``: the catalog of ``service`` and ``api``: SQLite, or a database of a
  private PostgreSQL started once per session (``tests/pgfixtures.py``).  The
  PostgreSQL variants run in tests/contract only, and only on ext4, to keep
  the added time small.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from tests.fsfixtures import loop_capability, make_loop_fs
from tests.openapicheck import Contract, watch
from tests.patterns import Patterns
from vvhost.api.app import create_app
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.service import Config, Service
from vvhost.service.context import DEFAULT_ARRAY_ENV

pytest_plugins = ["tests.cephfixtures", "tests.pgfixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """PostgreSQL variants: contract tests on ext4 only (the catalog does not
    depend on the filesystem or the array under the plane), and so are the
    variants through a real server's unix socket (over SQLite only); tests marked
    ``dir_arrays`` (file endpoints serve dir arrays only) not on the rbd plane."""
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        pg = params.get("db_url") == "pg"
        contract = os.sep + "contract" + os.sep in str(item.path)
        ext4 = params.get("plane_dir", "ext4") == "ext4"
        pg_elsewhere = pg and (not contract or not ext4)
        # the unix-socket transport is the same whatever the plane's array and catalog:
        # tested on ext4 over SQLite
        socket_elsewhere = params.get("api") == "socket" and (not ext4 or pg)
        dir_only = item.get_closest_marker("dir_arrays") is not None
        if pg_elsewhere or socket_elsewhere or (dir_only and params.get("plane_dir") == "rbd"):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def xfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = loop_capability("xfs")
    if reason:
        pytest.skip(f"no XFS reflink filesystem on this machine: {reason}")
    with make_loop_fs(str(tmp_path_factory.mktemp("xfs")), "xfs", "8G") as mnt:
        yield mnt


def _on_xfs(request: pytest.FixtureRequest) -> Iterator[str]:
    mnt = request.getfixturevalue("xfs_mount")
    path = os.path.join(mnt, uuid.uuid4().hex[:12])
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A directory with a short path (under /tmp), for what puts unix sockets deep
    inside it: a test's own directory can be longer than a socket path may be when
    several workers run the tests. Removed afterwards unless something is still
    mounted below it (that is then the test's failure to report, not to erase)."""
    path = tempfile.mkdtemp(prefix="vvt", dir="/tmp")
    try:
        yield path
    finally:
        with open("/proc/self/mounts") as fh:
            mounted = any(line.split()[1].startswith(path + "/") for line in fh)
        if not mounted:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["ext4", "xfs"])
def fs_dir(request: pytest.FixtureRequest, tmp_path: str) -> Iterator[str]:
    if request.param == "ext4":
        yield str(tmp_path)
        return
    yield from _on_xfs(request)


@pytest.fixture(params=["ext4", "xfs", "rbd"])
def plane_dir(request: pytest.FixtureRequest, tmp_path: str) -> Iterator[str]:
    """The contract tests' control plane: its state directory on ext4 or XFS, and its
    default array there (``dir``) or, with ``rbd``, a pool of the test cluster."""
    if request.param == "xfs":
        yield from _on_xfs(request)
        return
    yield str(tmp_path)


@pytest.fixture
def default_array(
    request: pytest.FixtureRequest, plane_dir: str, patterns: Patterns
) -> dict[str, str] | None:
    """The default array's spec (``VVHOST_DEFAULT_ARRAY``): None (a dir array in the
    state directory) except for ``plane_dir`` rbd: a fresh pool of the test cluster."""
    if request.node.callspec.params.get("plane_dir") != "rbd":
        return None
    lab = request.getfixturevalue("ceph_cluster")
    pool = request.getfixturevalue("ceph_pool")
    patterns.ceph = (lab.conf, lab.admin_keyring)
    return {"backend": "rbd", "pool": pool, "conf": lab.conf, "keyring": lab.admin_keyring}


@pytest.fixture
def service(
    plane_dir: str, default_array: dict[str, str] | None, db_url: str | None
) -> Iterator[Service]:
    state = os.path.join(plane_dir, "state")
    svc = Service(Config(state_dir=state, default_array=default_array, db_url=db_url))
    svc.start()
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture(params=["in-process", "socket"])
def api(
    request: pytest.FixtureRequest,
    plane_dir: str,
    default_array: dict[str, str] | None,
    db_url: str | None,
) -> Iterator[Client]:
    state = os.path.join(plane_dir, "state")
    if request.param == "in-process":
        svc = Service(Config(state_dir=state, default_array=default_array, db_url=db_url))
        svc.start()
        client = Client.in_process(create_app(svc))
        watch(client.http, Contract(client.http.get("/openapi.json").json()))
        try:
            yield client
        finally:
            client.close()
            svc.close()
        return
    env = {DEFAULT_ARRAY_ENV: json.dumps(default_array)} if default_array else {}
    args = ["--db-url", db_url] if db_url else []
    server = ServerProcess(
        state, socket_path=os.path.join(plane_dir, "s.sock"), env=env, args=args
    ).start()
    client = server.client()
    watch(client.http, Contract(client.http.get("/openapi.json").json()))
    try:
        yield client
    finally:
        client.close()
        server.stop()


@pytest.fixture
def patterns() -> Patterns:
    return Patterns()
