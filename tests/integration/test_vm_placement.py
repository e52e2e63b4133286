"""``vvhost vm create`` in a datastore spanning a ``dir`` container and an RBD
container puts every vvol of the VM on a container its endpoint can serve:

    datastore mix ── container local (dir array "local")   file0, nbd0, iscsi0
                 └── container pool  (rbd array a1)        rbd0, nbd0, iscsi0

- ``--protocol file``: config and disks land in ``local`` (a file endpoint
  cannot serve RBD), though ``pool`` has more room
- ``--protocol rbd``: they land in ``pool`` (an rbd endpoint cannot serve dir)
- ``vm clone`` of the file VM: the clone's vvols stay where file0 reaches
- a datastore on the RBD container only, ``--protocol file``: one line naming the
  endpoint and what it cannot serve, exit non-zero, no vvol and no domain made

Real control plane, Ceph cluster and libvirtd of lab host kvm1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.listing import without_figures
from tests.vmlab import Lab, running_lab

if TYPE_CHECKING:
    from vvhost.cephlab import CephLab
    from vvhost.guest import GuestImage


@pytest.fixture
def mixlab(
    tmp_path: Path, guest: GuestImage, ceph_cluster: CephLab, ceph_pool: str
) -> Iterator[Lab]:
    with running_lab(str(tmp_path), guest, rbd=(ceph_cluster, ceph_pool)) as lab:
        lab.api.container_create("local", "1G")  # on the default dir array
        lab.api.datastore_create("mix", "2G", containers=["pool", "local"])
        lab.api.datastore_create("rbdonly", "1G", containers=["pool"])
        yield lab


def vm_create(lab: Lab, name: str, datastore: str, protocol: str) -> Any:
    return lab.vvhost(
        "kvm1", "vm", "create", name, "--datastore", datastore, "--memory", "128",
        "--disk", "8M", "--disk", "4M", "--protocol", protocol,
        "--kernel", lab.guest.kernel, "--initrd", lab.guest.initrd, "--json",
    )  # fmt: skip


def containers_of(lab: Lab, vm: str) -> dict[str, str]:
    """vvol name -> container, for the vvols of ``vm``."""
    return {
        v["name"]: v["container"]
        for v in lab.api.vvols()
        if str(v.get("name") or "").startswith(f"{vm}.")
    }


def test_vm_create_places_vvols_where_its_endpoint_reaches(mixlab: Lab) -> None:
    lab = mixlab
    pool = next(c for c in lab.api.containers() if c["name"] == "pool")
    local = next(c for c in lab.api.containers() if c["name"] == "local")
    assert pool["free"] > local["free"]  # left to itself, placement would pick pool

    out = vm_create(lab, "vf", "mix", "file")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pe"] == "file0"
    assert containers_of(lab, "vf") == {"vf.config": "local", "vf.vda": "local", "vf.vdb": "local"}

    out = vm_create(lab, "vr", "mix", "rbd")
    assert out.returncode == 0, out.stderr
    assert containers_of(lab, "vr") == {"vr.config": "pool", "vr.vda": "pool", "vr.vdb": "pool"}

    before = without_figures(lab.api.vvols())
    out = vm_create(lab, "vx", "rbdonly", "file")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "endpoint file0 cannot serve datastore rbdonly" in lines[0], lines[0]
    assert "rbd array a1" in lines[0], lines[0]
    assert without_figures(lab.api.vvols()) == before  # nothing made
    listed = lab.vvhost("kvm1", "vm", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(vm["name"] for vm in json.loads(listed.stdout)) == ["vf", "vr"]

    # a clone's vvols follow the source's endpoint too (the config vvol included)
    out = lab.vvhost("kvm1", "vm", "clone", "vf", "vf2", "--json")
    assert out.returncode == 0, out.stderr
    assert containers_of(lab, "vf2") == {
        "vf2.config": "local", "vf2.vda": "local", "vf2.vdb": "local"
    }  # fmt: skip

    for vm in ("vf2", "vf", "vr"):
        out = lab.vvhost("kvm1", "vm", "delete", vm)
        assert out.returncode == 0, out.stderr
    assert lab.api.vvols() == []
