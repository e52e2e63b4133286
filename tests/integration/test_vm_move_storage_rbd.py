"""``vvhost vm move-storage`` between a ``dir`` array (XFS, COW mode) and an RBD
array of a private Ceph cluster, both ways, keeping the snapshot points (files on
``dir``, RBD snapshots on RBD); every point reads the same before and after.

- stopped, dir -> RBD, one disk first (the VM then binds through ``nbd``, which
  serves both), then the other (now ``rbd``); after a revert to a point on RBD
  the VM starts through QEMU's own librbd and sees that point; running there, its
  storage moves back to ``dir`` (block copy onto an iSCSI binding) while the
  guest waits, and the guest reads and writes on (moving one disk only is
  refused: librbd cannot reach the other on ``dir``);
- running, dir -> RBD: libvirt 9.0 cannot add a namespaced RBD image to a running
  domain, so the block copy goes through the ``nbd`` endpoint (a qemu-storage-daemon
  rbd node), which the VM keeps; it reboots from RBD and reverts there; a
  ``vvhost`` killed with the copies ready leaves the VM on ``dir``, nothing on RBD.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import libvirt
import pytest

from tests.patterns import Patterns
from tests.vmlab import (
    Lab,
    add_go_channel,
    boot,
    create_vm,
    go,
    log_text,
    see,
    set_cmdline,
    verify_all,
    vvhost_json,
    wait_for_end,
    wait_line,
    write_all,
)
from vvhost.cephlab import CephLab
from vvhost.guest import guest_cmdline, parse_serial
from vvhost.host.config import HostConfig
from vvhost.units import parse_size

Points = dict[tuple[str, str], str]


@pytest.fixture
def rbdlab(snaplab: Lab, ceph_cluster: CephLab, ceph_pool: str) -> Iterator[Lab]:
    """The XFS lab plus RBD array ``ceph`` and an ``rbd`` endpoint ``rbd0`` for it;
    host kvm1 prefers the ``rbd`` protocol (its VMs here are made with ``iscsi``)."""
    conf = HostConfig.load(snaplab.confs["kvm1"])
    replace(conf, protocol="rbd").save(snaplab.confs["kvm1"])
    settings = {"pool": ceph_pool, "conf": ceph_cluster.conf, "keyring": ceph_cluster.admin_keyring}
    snaplab.api.array_add("ceph", "rbd", settings)
    snaplab.api.pe_create("rbd0", "rbd", array="ceph")
    yield snaplab


def add_rpool(lab: Lab) -> None:
    """Container ``rpool`` on the RBD array, made part of datastore ``ds`` (after the
    VM is made: its vvols are in ``pool``)."""
    lab.api.container_create("rpool", "4G", arrays=["ceph"])
    lab.api.datastore_extend("ds", int(lab.api.datastore("ds")["capacity"]) + parse_size("4G"))
    assert "rpool" in lab.api.datastore("ds")["container_names"]


@pytest.fixture
def pat(ceph_cluster: CephLab) -> Patterns:
    p = Patterns()
    p.ceph = (ceph_cluster.conf, ceph_cluster.admin_keyring)
    return p


def points(lab: Lab, vm: str) -> dict[tuple[str, str], dict[str, object]]:
    """(point or "now", target) -> ``vvol show`` of that vvol."""
    out = {}
    for p in vvhost_json(lab, "kvm1", "vm", "snapshots", vm)["points"]:
        for target, vvol in p["disks"].items():
            out[(p["name"], target)] = lab.api.vvol(vvol)
    for d in vvhost_json(lab, "kvm1", "vm", "show", vm)["disks"]:
        out[("now", d["target"])] = lab.api.vvol(d["vvol"])
    return out


def digests(lab: Lab, vm: str, pat: Patterns) -> Points:
    return {key: pat.digest(v) for key, v in points(lab, vm).items()}


def on(lab: Lab, vm: str, array: str) -> None:
    """Every disk and point of ``vm`` lives on ``array``: files on dir, an RBD image
    with one snapshot per point on RBD."""
    found = points(lab, vm)
    assert {v["array"] for v in found.values()} == {array}
    for (point, _target), v in found.items():
        where = str(v["where"])
        if array == "ceph":
            assert not where.startswith("/") and ("@" in where) == (point != "now"), where
        else:
            assert where.startswith("/"), where


def lab_domain_xml(lab: Lab, vm: str) -> str:
    conn = libvirt.open(lab.hosts["kvm1"].uri)
    try:
        return str(conn.lookupByName(vm).XMLDesc(0))
    finally:
        conn.close()


def containers_of(lab: Lab, vm: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for v in lab.api.vvols():
        if v["name"] and v["name"].startswith(f"{vm}."):
            out.setdefault(v["container"], set()).add(v["name"])
    return out


def everything(vm: str, snaps: tuple[str, ...]) -> set[str]:
    return {f"{vm}.config", f"{vm}.vda", f"{vm}.vdb"} | {
        f"{vm}.{t}@{s}" for t in ("vda", "vdb") for s in snaps
    }


def test_stopped_both_ways_and_running_off_librbd(rbdlab: Lab, pat: Patterns) -> None:
    lab = rbdlab
    log = create_vm(lab, "vm1", "iscsi", write_all("A"))
    add_rpool(lab)
    assert parse_serial(boot(lab, "vm1", log)).ok
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s1")
    set_cmdline(lab, "kvm1", "vm1", guest_cmdline(write_all("B")))
    assert parse_serial(boot(lab, "vm1", log)).ok
    before = digests(lab, "vm1", pat)

    # one disk first: only nbd serves both a dir file and an RBD image
    one = ["move-storage", "vm1", "--container", "rpool", "--disk", "vda"]
    assert vvhost_json(lab, "kvm1", "vm", *one)["pe"] == "nbd0"
    assert containers_of(lab, "vm1") == {
        "rpool": {"vm1.vda", "vm1.vda@s1"},
        "pool": {"vm1.config", "vm1.vdb", "vm1.vdb@s1"},
    }
    assert digests(lab, "vm1", pat) == before
    see(lab, "vm1", log, "B", "A")
    moved = vvhost_json(lab, "kvm1", "vm", "move-storage", "vm1", "--container", "rpool")
    assert not moved["running"] and moved["pe"] == "rbd0"
    assert {d["target"]: d["points"] for d in moved["disks"]} == {"vdb": 1}
    assert containers_of(lab, "vm1") == {"rpool": everything("vm1", ("s1",))}
    on(lab, "vm1", "ceph")
    assert digests(lab, "vm1", pat) == before
    assert vvhost_json(lab, "kvm1", "vm", "show", "vm1")["pe"] == "rbd0"

    assert lab.vvhost("kvm1", "vm", "revert", "vm1", "s1").returncode == 0  # an RBD snapshot

    # started through librbd, it sees s1's data; its storage moves back to dir
    # while the guest waits
    cmds = verify_all("A") + ["wait", "write:vda:D:8:2", "verify:vda:D:8:2"]
    set_cmdline(lab, "kvm1", "vm1", guest_cmdline(cmds, keep_running=True))
    channel = add_go_channel(lab, "kvm1", "vm1")
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    wait_line(log, "wait 1")
    seen = parse_serial(log_text(log)).results
    assert all(seen[c] == "ok" for c in verify_all("A")), seen
    assert "protocol='rbd'" in lab_domain_xml(lab, "vm1")
    before = digests(lab, "vm1", pat)
    part = lab.vvhost("kvm1", "vm", "move-storage", "vm1", "--container", "pool", "--disk", "vda")
    assert part.returncode == 4 and "move all its disks or stop it" in part.stderr, part.stderr
    assert part.stderr.count("\n") == 1 and set(containers_of(lab, "vm1")) == {"rpool"}
    back = vvhost_json(lab, "kvm1", "vm", "move-storage", "vm1", "--container", "pool")
    assert back["running"] and back["pe"] == "iscsi0"
    assert containers_of(lab, "vm1") == {"pool": everything("vm1", ("s1",))}
    on(lab, "vm1", "a1")
    assert digests(lab, "vm1", pat) == before
    go(channel, log, 1)
    wait_for_end(log)
    report = parse_serial(log_text(log))
    assert report.results and all(v == "ok" for v in report.results.values()), report
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0
    assert lab.api.bindings() == []
    set_cmdline(lab, "kvm1", "vm1", guest_cmdline(verify_all("A") + ["verify:vda:D:8:2"]))
    assert parse_serial(boot(lab, "vm1", log)).ok
    assert lab.api.vvols(container="rpool") == []
    assert lab.api.audit()["ok"]


def test_running_onto_rbd_through_nbd(rbdlab: Lab, pat: Patterns) -> None:
    lab = rbdlab
    cmds = write_all("A") + ["wait"] + write_all("B") + ["wait"]
    cmds += verify_all("B") + ["write:vda:C:8:2", "verify:vda:C:8:2"]
    log = create_vm(lab, "vm2", "iscsi", cmds, keep_running=True)
    channel = add_go_channel(lab, "kvm1", "vm2")
    add_rpool(lab)
    assert lab.vvhost("kvm1", "vm", "start", "vm2").returncode == 0
    wait_line(log, "wait 1")
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm2", "s1")
    go(channel, log, 1)
    wait_line(log, "wait 2")  # B written; the guest idles while its storage moves
    before = digests(lab, "vm2", pat)
    crashed = lab.vvhost(
        "kvm1", "vm", "move-storage", "vm2", "--container", "rpool",
        env={"VVHOST_HOST_FAULT_AT": "move-storage:mirror-ready"},
    )  # fmt: skip
    assert crashed.returncode == -9, crashed.stderr
    vvhost_json(lab, "kvm1", "vm", "snapshots", "vm2")  # the next command settles it: back
    assert containers_of(lab, "vm2") == {"pool": everything("vm2", ("s1",))}
    assert lab.api.vvols(container="rpool") == [] and digests(lab, "vm2", pat) == before

    moved = vvhost_json(lab, "kvm1", "vm", "move-storage", "vm2", "--container", "rpool")
    assert moved["running"] and moved["pe"] == "nbd0"
    assert containers_of(lab, "vm2") == {"rpool": everything("vm2", ("s1",))}
    on(lab, "vm2", "ceph")
    assert digests(lab, "vm2", pat) == before
    assert vvhost_json(lab, "kvm1", "vm", "show", "vm2")["state"] == "running"

    go(channel, log, 2)  # the guest reads B from RBD and writes C
    wait_for_end(log)
    report = parse_serial(log_text(log))
    assert report.results and all(v == "ok" for v in report.results.values()), report
    assert lab.vvhost("kvm1", "vm", "stop", "vm2", "--force").returncode == 0
    assert lab.api.bindings() == []
    vda = points(lab, "vm2")[("now", "vda")]
    pat_c = guest_cmdline(verify_all("B") + ["verify:vda:C:8:2"])
    set_cmdline(lab, "kvm1", "vm2", pat_c)
    assert parse_serial(boot(lab, "vm2", log)).ok
    assert lab.vvhost("kvm1", "vm", "revert", "vm2", "s1").returncode == 0
    see(lab, "vm2", log, "A", "B")
    assert lab.api.vvol(str(vda["id"]))["array"] == "ceph"
    assert lab.api.vvols(container="pool") == [] and lab.api.bindings() == []
    assert lab.api.audit()["ok"]
