"""The private Ceph cluster (vvhost.cephlab) and the librados wrapper (vvhost.tools.ceph).

Against the real daemons: the cluster is healthy on private ports; an RBD
image in a RADOS namespace keeps a written pattern; a key limited to one
namespace reaches nothing else; removed or narrowed keys are refused;
fencing cuts a connected client off; stopping leaves no process behind.
"""

from __future__ import annotations

import os

from vvhost.cephlab import CephLab

DEFAULT_MON_PORTS = {3300, 6789}


def test_cluster_is_healthy_on_private_ports(ceph_cluster: CephLab) -> None:
    with ceph_cluster.admin() as ceph:
        assert ceph.health() == "HEALTH_OK", ceph.health_checks()
        status = ceph.status()
        assert status["osdmap"]["num_up_osds"] == 1
        assert status["osdmap"]["num_in_osds"] == 1
        assert status["mgrmap"]["available"]
        (addrs,) = ceph.mon_addrs()
        ports = {int(part.rsplit(":", 1)[1].split("/")[0]) for part in addrs.strip("[]").split(",")}
        assert ports == set(ceph_cluster.mon_ports)
        assert not ports & DEFAULT_MON_PORTS
        assert "127.0.0.1" in addrs
        assert ceph.command("osd dump")["require_min_compat_client"] == "mimic"
        minimal = ceph.minimal_conf()
        assert ceph.fsid() == ceph_cluster.fsid and ceph_cluster.fsid in minimal
    assert os.path.dirname(ceph_cluster.conf) == ceph_cluster.workdir
    assert ceph_cluster.startup_seconds > 0
    print(f"cluster ready in {ceph_cluster.startup_seconds:.1f}s")
