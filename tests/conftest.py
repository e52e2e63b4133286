"""Shared fixtures.

- ``fs_dir``: a fresh directory on ext4 (no reflink: the copy fallback) and on a
  loop-mounted XFS with reflink (skipped, with the reason, where the machine
  cannot loop-mount).
- ``service``: an in-process control plane on ``fs_dir``.
- ``api``: an API client against that service, in-process and over a real unix
  socket served by a ``vvhost serve`` child process: the contract tests run on both.
- ``ceph_cluster``, ``ceph_pool``: a private Ceph cluster per session and a
  fresh RBD pool per test (``tests/cephfixtures.py``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from tests.fsfixtures import loop_capability, make_loop_fs
from tests.patterns import Patterns
from vvhost.api.app import create_app
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.service import Config, Service

pytest_plugins = ["tests.cephfixtures"]


@pytest.fixture(scope="session")
def xfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = loop_capability("xfs")
    if reason:
        pytest.skip(f"no XFS reflink filesystem on this machine: {reason}")
    with make_loop_fs(str(tmp_path_factory.mktemp("xfs")), "xfs", "8G") as mnt:
        yield mnt


@pytest.fixture(params=["ext4", "xfs"])
def fs_dir(request: pytest.FixtureRequest, tmp_path: str) -> Iterator[str]:
    if request.param == "ext4":
        yield str(tmp_path)
        return
    mnt = request.getfixturevalue("xfs_mount")
    path = os.path.join(mnt, uuid.uuid4().hex[:12])
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service(fs_dir: str) -> Iterator[Service]:
    svc = Service(Config(state_dir=os.path.join(fs_dir, "state")))
    svc.start()
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture(params=["in-process", "socket"])
def api(request: pytest.FixtureRequest, fs_dir: str) -> Iterator[Client]:
    state = os.path.join(fs_dir, "state")
    if request.param == "in-process":
        svc = Service(Config(state_dir=state))
        svc.start()
        client = Client.in_process(create_app(svc))
        try:
            yield client
        finally:
            client.close()
            svc.close()
        return
    server = ServerProcess(state, socket_path=os.path.join(fs_dir, "s.sock")).start()
    client = server.client()
    try:
        yield client
    finally:
        client.close()
        server.stop()


@pytest.fixture
def patterns() -> Patterns:
    return Patterns()
