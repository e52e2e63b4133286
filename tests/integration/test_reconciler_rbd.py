"""``audit --fix`` on a Ceph RBD array: an image vvhost made (in its index) whose
catalog row was lost is removed after the grace period; images vvhost did not
make, in the same pool and namespace, are never touched; live vvols keep their
data."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.patterns import CHUNK, Patterns
from vvhost.catalog import repo, vvolrepo
from vvhost.cephlab import CephLab
from vvhost.service import Config, Service


@pytest.fixture
def rbd_service(tmp_path: str, ceph_cluster: CephLab, ceph_pool: str) -> Iterator[Service]:
    spec = {
        "backend": "rbd",
        "pool": ceph_pool,
        "conf": ceph_cluster.conf,
        "keyring": ceph_cluster.admin_keyring,
    }
    svc = Service(
        Config(
            state_dir=os.path.join(str(tmp_path), "state"),
            default_array=spec,
            reconcile_interval=0,
        )
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.close()


def test_fix_removes_lost_images_and_spares_foreign_ones(
    rbd_service: Service, ceph_cluster: CephLab, ceph_pool: str
) -> None:
    import rados
    import rbd

    svc = rbd_service
    patterns = Patterns()
    patterns.ceph = (ceph_cluster.conf, ceph_cluster.admin_keyring)
    svc.containers.create("pool1", "1G")
    keep = svc.vvols.create("pool1", "8M", name="keep")
    lost = svc.vvols.create("pool1", "8M", name="lost")
    patterns.write(keep["where"], "K", [0, CHUNK])
    namespace = keep["where"].split("/")[1]
    # the catalog row of "lost" goes missing (as a restore of an older catalog would)
    with svc.ctx.db.tx() as conn:
        v = vvolrepo.get(conn, lost["id"])
        assert v is not None
        repo.reserve(conn, v.container, -v.size)
        vvolrepo.remove(conn, v.id)
    # images somebody else made, next to vvhost's
    foreign = [("", "their-disk"), (namespace, "their-other-disk")]
    with rados.Rados(conffile=ceph_cluster.conf, conf={"keyring": ceph_cluster.admin_keyring}) as c:
        with c.open_ioctx(ceph_pool) as ioctx:
            for ns, name in foreign:
                ioctx.set_namespace(ns)
                rbd.RBD().create(ioctx, name, 4 << 20)
                with rbd.Image(ioctx, name) as img:
                    img.write(b"foreign data" * 100, 0)

    first = svc.reconciler.round()  # seen once: not yet a finding (it might be passing)
    assert first["new"] == []
    second = svc.reconciler.round()
    assert [f for f in second["new"] if "has no catalog row" in f] != []
    assert svc.reconciler.round()["new"] == []  # and never again while it lasts
    report = svc.audit(fix=True)  # default grace: just found, so it stays
    assert svc.ctx.backend(v.array).exists(lost["id"])
    assert any(r["action"] == "left" and "grace" in r["reason"] for r in report["repairs"])
    report = svc.audit(fix=True, grace=0)
    removed = [r for r in report["repairs"] if r["action"] == "removed"]
    assert len(removed) == 1 and removed[0]["subject"] == "array:local"
    assert not svc.ctx.backend(v.array).exists(lost["id"])
    with rados.Rados(conffile=ceph_cluster.conf, conf={"keyring": ceph_cluster.admin_keyring}) as c:
        with c.open_ioctx(ceph_pool) as ioctx:
            for ns, name in foreign:
                ioctx.set_namespace(ns)
                assert name in rbd.RBD().list(ioctx)
                with rbd.Image(ioctx, name, read_only=True) as img:
                    assert img.read(0, 1200) == b"foreign data" * 100
    patterns.check(keep["where"], "K", [0, CHUNK])
    assert report["ok"], report["problems"]
