"""VMs whose disks live on a Ceph RBD array, end to end through ``vvhost vm ...``.

Real components: the private Ceph cluster (session fixture, a fresh pool per
test), the control plane with RBD array ``a1`` (a RADOS namespace per container)
and endpoint ``rbd0``, private libvirtd lab hosts with the hook and the QEMU
wrapper, QEMU TCG opening the images with its own librbd as the host's Ceph
identity::

    control plane ── a1 (pool P, admin) ── container "pool" = namespace ── datastore ds
         │ rbd0: bind = a handle + client.vvhost-<host> with caps on that namespace only
    kvm1 / kvm2: libvirt <disk type='network'><source protocol='rbd'> + the host's secret

Lifecycle: a pattern written into the image before the first boot is seen by the
guest; it writes A, COW snapshot s1, B, COW snapshot s2 with memory, C; revert to
s1 (the guest sees A, not B) and to s2 (resumes from memory where it waited, the
image holds B); a linked clone of s1 boots and sees A; a running disk grows and
the guest sees the new size. Migration: a guest counting on its disk moves live
from kvm1 to kvm2 and back (librbd on both sides, the exclusive lock follows it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import rbd

from tests.patterns import Patterns
from tests.vmlab import (
    VDA_MIB,
    VDB_MIB,
    Lab,
    MiB,
    add_go_channel,
    append_serial,
    create_vm,
    go,
    grow_online,
    log_text,
    running_lab,
    see,
    vvhost_json,
    wait_for_end,
    wait_line,
    write_all,
)
from vvhost.cephlab import CephLab
from vvhost.guest import SECTOR, GuestImage, parse_serial, pattern_bytes


@pytest.fixture
def rbdlab(
    tmp_path: Path, guest: GuestImage, ceph_cluster: CephLab, ceph_pool: str
) -> Iterator[Lab]:
    with running_lab(str(tmp_path), guest, rbd=(ceph_cluster, ceph_pool)) as lab:
        yield lab


@pytest.fixture
def rbdpair(
    tmp_path: Path, guest: GuestImage, ceph_cluster: CephLab, ceph_pool: str
) -> Iterator[Lab]:
    """The same, with kvm1 and kvm2 both taking live migrations on 127.0.0.1."""
    with running_lab(str(tmp_path), guest, rbd=(ceph_cluster, ceph_pool), migration=True) as lab:
        lab.add_host("kvm2", protocol="rbd", migration=True)
        yield lab


def volumes(ceph: CephLab) -> Patterns:
    pat = Patterns()
    pat.ceph = (ceph.conf, ceph.admin_keyring)
    return pat


def where(lab: Lab, vvol: str) -> dict[str, Any]:
    info = lab.api.vvol(vvol)
    assert info["where"] and not info.get("path"), info  # an RBD image, not a file
    return info


def host_identities(ceph: CephLab) -> list[str]:
    """Host identities that reach anything (one without bindings keeps its key, no caps)."""
    with ceph.admin() as admin:
        names = [n for n in admin.auth_ls() if n.startswith("client.vvhost-")]
        return sorted(n for n in names if admin.auth_caps_of(n))


def snapshot_names(ceph: CephLab, where: str) -> set[str]:
    """The snapshots of the image ``pool/namespace/image[@snap]`` names."""
    pool, ns, image = where.split("@")[0].split("/")
    with ceph.admin() as admin, admin.ioctx(pool, ns) as ioctx:
        with rbd.Image(ioctx, image, read_only=True) as img:
            return {str(snap["name"]) for snap in img.list_snaps()}


def images_left(ceph: CephLab, pool: str) -> list[str]:
    """Every image in every namespace of ``pool`` (the trash not counted)."""
    with ceph.admin() as admin, admin.ioctx(pool) as ioctx:
        spaces = [""] + list(rbd.RBD().namespace_list(ioctx))
        found = []
        for ns in spaces:
            ioctx.set_namespace(ns)
            found += [f"{ns}/{name}" for name in rbd.RBD().list(ioctx)]
        return found


def test_vm_on_rbd_boots_snapshots_reverts_clones_and_grows(
    rbdlab: Lab, ceph_cluster: CephLab, ceph_pool: str
) -> None:
    lab, pat = rbdlab, volumes(ceph_cluster)
    cmds = ["verify:vda:P:8:2"] + write_all("A") + ["wait"] + write_all("B") + ["wait"]
    cmds += write_all("C")
    log = create_vm(lab, "vm1", "rbd", cmds, keep_running=True)
    vda = where(lab, "vm1.vda")
    assert vda["where"].startswith(f"{ceph_pool}/")  # pool/namespace/image
    with pat.open(vda, writable=True) as vol:  # written before the first boot
        vol.write(8 * MiB, pattern_bytes("P", 8, 2))
    channel = add_go_channel(lab, "kvm1", "vm1")
    out = lab.vvhost("kvm1", "vm", "start", "vm1")
    assert out.returncode == 0, out.stderr
    wait_line(log, "wait 1")
    assert parse_serial(log_text(log)).results["verify:vda:P:8:2"] == "ok"
    assert host_identities(ceph_cluster) == ["client.vvhost-kvm1"]
    s1 = vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s1", "--description", "only A")
    assert s1["running"] and s1["mode"] == "cow" and s1["stun_ms"] > 0
    go(channel, log, 1)
    wait_line(log, "wait 2")
    s2 = vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s2", "--memory")
    assert s2["mode"] == "cow" and s2["memory"]
    assert where(lab, s2["memory"])["type"] == "memory"
    go(channel, log, 2)
    wait_for_end(log)
    assert parse_serial(log_text(log)).ok
    # the snapshot points are RBD snapshots of the live image, holding A and B
    points = {p["name"]: p for p in vvhost_json(lab, "kvm1", "vm", "snapshots", "vm1")["points"]}
    for name, label in (("s1", "A"), ("s2", "B")):
        snap = where(lab, points[name]["disks"]["vda"])
        assert "@" in snap["where"] and snap["where"].split("@")[0] == vda["where"]
        assert pat.read(snap, 0, VDA_MIB * MiB) == pattern_bytes(label, 0, VDA_MIB)
    assert pat.read(vda, 0, VDA_MIB * MiB) == pattern_bytes("C", 0, VDA_MIB)

    # revert to s1 (keeping s2): the guest sees A, not B
    out = lab.vvhost("kvm1", "vm", "revert", "vm1", "s1", "--force")
    assert out.returncode == 0, out.stderr
    see(lab, "vm1", log, "A", "B")
    # revert to s2 resumes the guest from memory where it waited
    os.unlink(log)
    resumed = vvhost_json(lab, "kvm1", "vm", "revert", "vm1", "s2")
    assert resumed["started"]
    assert pat.read(where(lab, "vm1.vda"), 0, VDA_MIB * MiB) == pattern_bytes("B", 0, VDA_MIB)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(channel)
        sock.sendall(b"go\n")
    wait_for_end(log)
    after = log_text(log)
    assert "VVTEST go 2" in after and "VVTEST BEGIN" not in after, after
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0
    assert pat.read(where(lab, "vm1.vdb"), 0, VDB_MIB * MiB) == pattern_bytes("C", 0, VDB_MIB)

    # a linked clone of s1 is an RBD clone: it boots and sees A
    clone_log = os.path.join(lab.tmp, "vm2.serial")
    out = lab.vvhost(
        "kvm1", "vm", "clone", "vm1", "vm2", "--snapshot", "s1", "--linked",
        "--serial-log", clone_log,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    see(lab, "vm2", clone_log, "A", "C")
    assert lab.api.vvol("vm2.vda")["parent"] == points["s1"]["disks"]["vda"]
    refused = lab.vvhost("kvm1", "vm", "snapshot-delete", "vm1", "s1")
    assert refused.returncode == 4 and "linked clones use it" in refused.stderr
    # deleting s2 drops its RBD snapshots and its memory vvol; s1 stays
    s2_vda = where(lab, points["s2"]["disks"]["vda"])["where"]
    assert snapshot_names(ceph_cluster, s2_vda) >= {s2_vda.split("@")[1]}
    assert lab.vvhost("kvm1", "vm", "snapshot-delete", "vm1", "s2").returncode == 0
    assert s2_vda.split("@")[1] not in snapshot_names(ceph_cluster, s2_vda)
    left = {v["id"] for v in lab.api.vvols()}
    assert s2["memory"] not in left and points["s2"]["disks"]["vda"] not in left
    listing = vvhost_json(lab, "kvm1", "vm", "snapshots", "vm1")
    assert [p["name"] for p in listing["points"]] == ["s1"]

    grow_online(lab, log, channel)  # the running guest sees the new size at once
    assert pat.size(where(lab, "vm1.vda")) == 96 * MiB
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0

    for vm in ("vm2", "vm1"):
        out = lab.vvhost("kvm1", "vm", "delete", vm)
        assert out.returncode == 0, out.stderr
    assert lab.api.vvols() == [] and lab.api.bindings() == []
    assert host_identities(ceph_cluster) == []  # caps revoked with the last binding
    lab.api.array_reap("a1")
    assert images_left(ceph_cluster, ceph_pool) == []
    assert lab.api.audit()["ok"]


# -- live migration ------------------------------------------------------------------------

COUNTER_OFF = 8  # MiB into vda


def counter_in(pat: Patterns, target: dict[str, Any]) -> int | None:
    words = pat.read(target, COUNTER_OFF * MiB, SECTOR).split()
    if len(words) == 2 and words[0] == b"vvcounter" and words[1].isdigit():
        return int(words[1])
    return None


def counters(log: str) -> list[int]:
    return [int(w.split()[-1]) for w in log_text(log).splitlines() if "VVTEST counter " in w]


def lock_owners(ceph: CephLab, target: dict[str, Any]) -> list[str]:
    pool, ns, image = target["where"].split("/")
    with ceph.admin() as admin, admin.ioctx(pool, ns) as ioctx:
        with rbd.Image(ioctx, image, read_only=True) as img:
            lockers = img.list_lockers() or {"lockers": []}
            return [f"{client} {addr}" for client, _cookie, addr in lockers["lockers"]]


def check_counting(lab: Lab, pat: Patterns, log: str, since: int, vm: str = "mig") -> None:
    """The guest counts on past ``since`` (lines 10 apart, never back), and its
    newer values reach the RBD image."""
    deadline = time.monotonic() + 60
    while not counters(log) or counters(log)[-1] < since + 50:
        assert time.monotonic() < deadline, f"the counter stopped at {counters(log)[-1:]}"
        time.sleep(0.2)
    seen = counters(log)
    assert seen == list(range(10, seen[-1] + 1, 10)), f"a gap or a step back: {seen}"
    vda = where(lab, f"{vm}.vda")
    on_disk = counter_in(pat, vda)
    assert on_disk is not None and on_disk >= since + 40, (on_disk, since)
    time.sleep(0.5)
    later = counter_in(pat, vda)
    assert later is not None and later > on_disk, "the image stopped changing"
    assert pat.read(where(lab, f"{vm}.vdb"), 0, 4 * MiB) == pattern_bytes("Pre", 0, 4)


def test_vm_on_rbd_migrates_live_between_hosts(rbdpair: Lab, ceph_cluster: CephLab) -> None:
    lab, pat = rbdpair, volumes(ceph_cluster)
    src, dst = lab.hosts["kvm1"], lab.hosts["kvm2"]
    assert src.tcp_uri and dst.tcp_uri
    cmds = ["write:vdb:Pre:0:4", f"counter:vda:{COUNTER_OFF}"]
    # the protocol from kvm1's host.conf (rbd)
    log = create_vm(lab, "mig", "", cmds, disks=("16M", "8M"), keep_running=True)
    append_serial(lab, "kvm1", "mig")
    # plain libvirt starts it: between `vm create` and the start the host's identity
    # keeps its key but reaches nothing; the hook's binding gives it its caps back
    # (and writes the current key, which the QEMU wrapper hands to QEMU)
    assert host_identities(ceph_cluster) == []  # no identity reaches anything
    conn = src.connect()
    conn.lookupByName("mig").create()
    wait_line(log, "counter 20")
    vda = where(lab, "mig.vda")
    assert len(lock_owners(ceph_cluster, vda)) == 1

    for here, there, host in (("kvm1", dst, "kvm2"), ("kvm2", src, "kvm1")):
        owner = lock_owners(ceph_cluster, vda)
        at_switch = counters(log)[-1]
        out = lab.vvhost(
            here, "vm", "migrate", "mig", "--to", str(there.tcp_uri),
            "--migrate-uri", "tcp://127.0.0.1", "--json",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert (result["mode"], result["to"], result["pe"]) == ("live", host, "rbd0")
        assert {b["host"] for b in lab.api.bindings()} == {host}
        check_counting(lab, pat, log, at_switch)
        moved = lock_owners(ceph_cluster, vda)
        assert len(moved) == 1 and moved != owner, (owner, moved)  # the lock moved with it
        assert host_identities(ceph_cluster) == [f"client.vvhost-{host}"]

    assert lab.vvhost("kvm1", "vm", "stop", "mig", "--force").returncode == 0
    assert lab.api.bindings() == [] and host_identities(ceph_cluster) == []
    assert lab.vvhost("kvm1", "vm", "delete", "mig").returncode == 0
    assert lab.api.vvols() == [] and lab.api.audit()["ok"]


# -- the cut of a COW snapshot group ---------------------------------------------------------


def image_of(ceph: CephLab, target: dict[str, Any]) -> tuple[CephLab, str, str, str]:
    pool, ns, image = target["where"].split("@")[0].split("/")
    return ceph, pool, ns, image


def watchers(ceph: CephLab, target: dict[str, Any]) -> list[str]:
    """The clients that watch the image (QEMU; nobody else once a group is done)."""
    _ceph, pool, ns, image = image_of(ceph, target)
    with ceph.admin() as admin, admin.ioctx(pool, ns) as ioctx:
        with rbd.Image(ioctx, image, read_only=True) as img:
            return sorted(str(w["addr"]) for w in img.watchers_list())


def set_snap_limit(ceph: CephLab, target: dict[str, Any], limit: int | None) -> None:
    _ceph, pool, ns, image = image_of(ceph, target)
    with ceph.admin() as admin, admin.ioctx(pool, ns) as ioctx:
        with rbd.Image(ioctx, image) as img:
            if limit is None:
                img.remove_snap_limit()
            else:
                img.set_snap_limit(limit)


def running(lab: Lab, name: str) -> bool:
    dom = lab.hosts["kvm1"].connect().lookupByName(name)
    return bool(dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING)


def test_vm_on_rbd_snapshot_cut_fails_on_one_disk_and_nothing_is_left(
    rbdlab: Lab, ceph_cluster: CephLab, ceph_pool: str
) -> None:
    """Both disks are cut at once. When one of them cannot be snapshotted (its
    image's snapshot limit is reached) the whole group goes: no new RBD snapshot
    on either image, no vvol, no point, no image left open by the control plane,
    and the guest runs on. Once the limit goes, the next snapshot holds what the
    guest wrote."""
    lab, pat = rbdlab, volumes(ceph_cluster)
    cmds = ["write:vdb:Pre:0:4", f"counter:vda:{COUNTER_OFF}"]
    log = create_vm(lab, "cut", "rbd", cmds, disks=("16M", "8M"), keep_running=True)
    out = lab.vvhost("kvm1", "vm", "start", "cut")
    assert out.returncode == 0, out.stderr
    wait_line(log, "counter 20")
    vda, vdb = where(lab, "cut.vda"), where(lab, "cut.vdb")
    seen = {t["where"]: watchers(ceph_cluster, t) for t in (vda, vdb)}
    assert all(seen.values()), seen  # QEMU has both open

    def snap_of(point: dict[str, Any], disk: str) -> dict[str, Any]:
        return where(lab, point["disks"][disk])

    def check_point(point: dict[str, Any]) -> None:
        """The point holds what the guest had: later counts reach the live image only."""
        assert point["running"] and point["mode"] == "cow" and point["stun_ms"] > 0
        at_cut = counter_in(pat, snap_of(point, "vda"))
        assert at_cut is not None and at_cut >= 20
        check_counting(lab, pat, log, at_cut, vm="cut")
        assert counter_in(pat, snap_of(point, "vda")) == at_cut
        assert pat.read(snap_of(point, "vdb"), 0, 4 * MiB) == pattern_bytes("Pre", 0, 4)

    s0 = vvhost_json(lab, "kvm1", "vm", "snapshot", "cut", "s0")
    check_point(s0)
    names = {t["where"]: snapshot_names(ceph_cluster, t["where"]) for t in (vda, vdb)}
    assert all(len(n) == 1 for n in names.values()), names
    assert {t["where"]: watchers(ceph_cluster, t) for t in (vda, vdb)} == seen
    vvols = {v["id"] for v in lab.api.vvols()}

    set_snap_limit(ceph_cluster, vdb, 1)  # vdb can take no further snapshot
    failed = lab.vvhost("kvm1", "vm", "snapshot", "cut", "s1")
    assert failed.returncode != 0 and failed.stderr.count("\n") == 1, failed.stderr
    assert "Traceback" not in failed.stderr and "quota" in failed.stderr, failed.stderr
    # nothing half-done: vda's snapshot, taken at the same moment, is gone too
    assert {t["where"]: snapshot_names(ceph_cluster, t["where"]) for t in (vda, vdb)} == names
    assert {v["id"] for v in lab.api.vvols()} == vvols
    points = vvhost_json(lab, "kvm1", "vm", "snapshots", "cut")["points"]
    assert [p["name"] for p in points] == ["s0"]
    assert {t["where"]: watchers(ceph_cluster, t) for t in (vda, vdb)} == seen
    assert lab.api.audit()["ok"]
    # the guest was resumed and counts on, onto its image
    assert running(lab, "cut")
    check_counting(lab, pat, log, counters(log)[-1], vm="cut")

    set_snap_limit(ceph_cluster, vdb, None)
    s1 = vvhost_json(lab, "kvm1", "vm", "snapshot", "cut", "s1")
    assert running(lab, "cut")
    check_point(s1)
    later, earlier = counter_in(pat, snap_of(s1, "vda")), counter_in(pat, snap_of(s0, "vda"))
    assert later is not None and earlier is not None and later > earlier
    for target, disk in ((vda, "vda"), (vdb, "vdb")):
        made = {snap_of(p, disk)["where"].split("@")[1] for p in (s0, s1)}
        assert snapshot_names(ceph_cluster, target["where"]) == made
    assert {t["where"]: watchers(ceph_cluster, t) for t in (vda, vdb)} == seen

    assert lab.vvhost("kvm1", "vm", "stop", "cut", "--force").returncode == 0
    out = lab.vvhost("kvm1", "vm", "delete", "cut")
    assert out.returncode == 0, out.stderr
    lab.api.array_reap("a1")
    assert images_left(ceph_cluster, ceph_pool) == []
    assert lab.api.audit()["ok"]
