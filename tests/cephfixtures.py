"""Ceph fixtures: one private cluster per test session, a fresh pool per test.

- ``ceph_cluster`` (session): a :class:`vvhost.cephlab.CephLab` (1 mon, 1 mgr,
  1 OSD on a sparse file, 127.0.0.1, free ports) under the session's temporary
  directory; stopped by PID at the end of the session. Before starting it,
  labs of earlier sessions whose pytest process died are stopped by PID.
- ``ceph_pool``: a new RBD pool (``rbd`` application, ``rbd pool init``) for
  one test, deleted afterwards (about half a second each way), and with it every host
  Ceph identity (``client.vvhost-*``): those outlive a pool, and a later test on
  the cluster (another module on the same worker) starts without them.
- ``array``, ``pool_io``: an RBD array on that pool (the control plane's view),
  and a second, independent client of the cluster.

The Ceph packages come from ``./run.sh setup``; a missing daemon or binding is
an error here, not a skip. The only skip: a temporary directory on a
filesystem without O_DIRECT (BlueStore needs it). ``vvhost.cephlab`` (and with it librados) is only
imported when a test asks for a cluster.
"""

from __future__ import annotations

import glob
import os
import uuid
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from vvhost.cephlab import CephLab


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephLab]:
    from vvhost import labpids
    from vvhost.cephlab import CephLab, capability

    root = str(tmp_path_factory.getbasetemp().parent)
    labpids.reap_orphans(sorted(glob.glob(os.path.join(root, "pytest-*", "ceph*"))))
    workdir = str(tmp_path_factory.mktemp("ceph"))
    reason = capability(workdir)
    if reason:
        pytest.skip(f"no private Ceph cluster on this machine: {reason}")
    with CephLab(workdir) as lab:
        yield lab


@pytest.fixture(autouse=True)
def _ceph_lab_alive(request: pytest.FixtureRequest) -> None:
    """Before each test on the session's cluster: a daemon of it that died is started
    again (and said, not hidden), so one crashed manager does not fail every later test."""
    if "ceph_cluster" not in request.fixturenames:
        return
    revived = request.getfixturevalue("ceph_cluster").revive()
    if revived:
        warnings.warn(f"Ceph lab daemons {revived} had died and were started again", stacklevel=1)


@pytest.fixture
def ceph_pool(ceph_cluster: CephLab) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    ceph_cluster.create_pool(name)
    try:
        yield name
    finally:
        ceph_cluster.delete_pool(name)
        with ceph_cluster.admin() as admin:
            for entity in admin.auth_ls():
                if entity.startswith("client.vvhost-"):
                    admin.auth_rm(entity)


@pytest.fixture
def array(ceph_cluster: CephLab, ceph_pool: str) -> Iterator[Any]:
    """An RBD array on the test's pool, as the control plane's admin (claimed, closed after).
    A test module's own ``array`` fixture (a dir array) takes precedence."""
    from vvhost.arrays.rbdarray import RbdArray
    from vvhost.arrays.settings import RbdSettings

    settings = RbdSettings(
        pool=ceph_pool, conf=ceph_cluster.conf, keyring=ceph_cluster.admin_keyring
    )
    arr = RbdArray("r1", settings, "array-1")
    arr.claim()
    try:
        yield arr
    finally:
        arr.close()


@pytest.fixture
def pool_io(ceph_cluster: CephLab, ceph_pool: str) -> Iterator[Any]:
    """A second, independent client of the cluster (stands for another host)."""
    import rados

    client = rados.Rados(
        conffile=ceph_cluster.conf, rados_id="admin", conf={"keyring": ceph_cluster.admin_keyring}
    )
    client.connect(timeout=10)
    try:
        with client.open_ioctx(ceph_pool) as io:
            yield io
    finally:
        client.shutdown()
