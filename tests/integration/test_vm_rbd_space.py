"""A guest's discards on an RBD vvol give space back to the pool: QEMU opens the
image with its own librbd (``<driver discard='unmap'/>``), so the guest's
blkdiscard becomes an RBD discard and whole objects go away.

The guest writes 12 MiB (three 4 MiB objects), waits while the test measures the
image's allocated bytes (``diff_iterate`` of the image alone), discards the first
8 MiB, verifies the 4 MiB it kept and powers off; the image then holds about
4 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import rbd

from tests.vmlab import (
    Lab,
    MiB,
    add_go_channel,
    create_vm,
    disk_drivers,
    go,
    log_text,
    running_lab,
    vvhost_json,
    wait_line,
    wait_off,
)
from vvhost.cephlab import CephLab
from vvhost.guest import GuestImage, parse_serial


@pytest.fixture
def rbdlab(
    tmp_path: Path, guest: GuestImage, ceph_cluster: CephLab, ceph_pool: str
) -> Iterator[Lab]:
    with running_lab(str(tmp_path), guest, rbd=(ceph_cluster, ceph_pool)) as lab:
        yield lab


def allocated(ceph: CephLab, where: str) -> int:
    """Bytes the image ``pool/namespace/image`` holds itself."""
    pool, ns, image = where.split("/")
    total = 0

    def count(_offset: int, length: int, exists: bool) -> int:
        nonlocal total
        total += length if exists else 0
        return 0

    with ceph.admin() as admin, admin.ioctx(pool, ns) as ioctx:
        with rbd.Image(ioctx, image, read_only=True) as img:
            img.diff_iterate(0, img.size(), None, count, include_parent=False, whole_object=False)
    return total


def test_guest_discard_gives_space_back_to_the_pool(rbdlab: Lab, ceph_cluster: CephLab) -> None:
    lab = rbdlab
    cmds = ["write:vda:R:0:12", "wait", "discard:vda:0:8", "verify:vda:R:8:4"]
    log = create_vm(lab, "trim", "rbd", cmds, disks=("16M",))
    channel = add_go_channel(lab, "kvm1", "trim")
    shown = vvhost_json(lab, "kvm1", "vm", "show", "trim")
    vda = next(d["vvol"] for d in shown["disks"] if d["target"] == "vda")
    where = lab.api.vvol(vda)["where"]
    try:
        out = lab.vvhost("kvm1", "vm", "start", "trim")
        assert out.returncode == 0, out.stderr
        wait_line(log, "wait 1", timeout=180)
        policy = {"error_policy": "stop", "rerror_policy": "stop", "discard": "unmap"}
        driver = disk_drivers(lab, "kvm1", "trim")["vda"]
        assert policy.items() <= driver.items(), driver
        before = allocated(ceph_cluster, where)
        assert before >= 12 * MiB, before
        go(channel, log, 1)
        wait_off(lab, "kvm1", "trim", timeout=180)
    finally:
        lab.vvhost("kvm1", "vm", "stop", "trim", "--force")
    after = allocated(ceph_cluster, where)
    report = parse_serial(log_text(log))
    assert report.ok, report
    assert report.results["discard:vda:0:8"] == "ok" and report.results["verify:vda:R:8:4"] == "ok"
    assert before - after >= 7 * MiB, f"allocated {before} -> {after}"
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]
    assert lab.vvhost("kvm1", "vm", "delete", "trim").returncode == 0
