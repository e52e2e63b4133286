"""VM snapshots in COW mode: ``vm-snapshot`` on a ``dir`` array on a loop-mounted
XFS with reflink (disks over iSCSI), ``vm-snapshot-rbd`` on an RBD array of a
private Ceph cluster (disks opened by QEMU's librbd through the ``rbd`` endpoint;
snapshots are RBD snapshots).

A running 2-disk VM (4 GiB disks, 1 GiB written into each):

- stun: how long ``vvhost vm snapshot`` keeps the guest paused (pause -> array
  snapshot of both disks -> resume), against libvirt's external disk-only
  snapshot of the same running VM onto pre-created local qcow2 overlays
  (DISK_ONLY | REUSE_EXT | ATOMIC | NO_METADATA).  libvirt stops the guest
  inside that call (one QMP transaction), so its whole call is what we can time:
  an upper bound of its stun.  vvhost's snapshots run first (the libvirt ones
  turn the disks into qcow2 chains), N of each.  The first snapshot of each disk
  must read as the data written before.  On RBD also, for the record (not in
  the ratio): QEMU's own ``transaction`` of ``blockdev-snapshot-internal-sync``
  over both disks (its rbd driver snapshots as the lock owner, one disk after
  the other), sent through libvirt's monitor passthrough; those snapshots are
  deleted again before libvirt's run.
- revert (XFS only): ``vvhost vm revert`` of the stopped VM to a snapshot, against a full copy
  of both disks from that snapshot with ``qemu-img convert``.  The reverted disks
  must read the same as the snapshot.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any

import libvirt
import libvirt_qemu

from tests.fsfixtures import loop_capability, make_loop_fs
from tests.vmlab import Lab, running_lab, wait_line
from vvhost.guest import GuestImage, build_guest, guest_cmdline
from vvhost.host.config import HostConfig
from vvhost.host.vms import VmManager
from vvhost.host.vmsnapshots import VmSnapshots

from .cephbench import Volumes, ceph_pool, where_of
from .common import (
    GiB,
    Result,
    check,
    content_digest,
    drop_caches,
    median,
    private_dir,
    skipped,
    timed_convert,
    write_spread,
)

REPS = 5
DISK = 4 * GiB
WRITTEN = 1 * GiB
STUN = "vm snapshot stun, 2 disks x 4 GiB (1 GiB written) vs libvirt external qcow2"
STUN_RBD = "rbd: vm snapshot stun, 2 running disks x 4 GiB (1 GiB written) vs libvirt qcow2"
REVERT = "xfs: vm revert, 2 disks vs qemu-img convert of both"


def run(reps: int | None = None) -> list[Result]:
    n = reps or REPS
    reason = loop_capability("xfs")
    if reason:
        return [
            skipped(STUN, "ratio <= 1.0", 1.0, reason),
            skipped(REVERT, "ratio < 0.05", 0.05, reason),
        ]
    guest = build_guest()
    with private_dir("vm-snapshot") as work, make_loop_fs(work, "xfs", "16G") as mnt:
        array = tempfile.mkdtemp(dir=mnt)
        with running_lab(os.path.join(work, "lab"), guest, array, capacity="120G") as lab:
            vms, disks = _running_vm(lab, guest, work, "iscsi", Volumes())
            try:
                stun = _vvhost_stun(vms, n, Volumes(), disks)
                base = _libvirt_stun(vms.domain("bench"), work, disks, n)
                vms.stop("bench", force=True)
                ours, copy = _revert(vms, lab.api, disks, mnt, n)
                check(lab.api.audit()["ok"], "audit after the benchmark")
            finally:
                vms.close()
    rows = [
        Result(STUN, "ratio <= 1.0", 1.0, median(stun), median(base), samples={
            "vvhost_stun": stun, "libvirt_call": base}).finish(),
        Result(REVERT, "ratio < 0.05", 0.05, median(ours), median(copy), samples={
            "vvhost": ours, "qemu_img_convert": copy}).finish(),
    ]  # fmt: skip
    rows[0].notes.append(
        "stun: vvhost's pause-to-resume window vs libvirt's whole snapshot call "
        "(its pause is inside the call)"
    )
    return rows


def run_rbd(reps: int | None = None) -> list[Result]:
    n = reps or REPS
    guest = build_guest()
    with private_dir("vm-snapshot-rbd") as work, ceph_pool(work) as ceph:
        vols = Volumes(ceph[0])
        with running_lab(os.path.join(work, "lab"), guest, capacity="120G", rbd=ceph) as lab:
            vms, disks = _running_vm(lab, guest, work, "rbd", vols)
            try:
                stun = _vvhost_stun(vms, n, vols, disks)
                txn = _qemu_transaction(vms.domain("bench"), n)
                base = _libvirt_stun(vms.domain("bench"), work, disks, n)
                vms.stop("bench", force=True)
                check(lab.api.audit()["ok"], "audit after the benchmark")
            finally:
                vms.close()
    row = Result(STUN_RBD, "ratio <= 1.0", 1.0, median(stun), median(base), samples={
        "vvhost_stun": stun, "libvirt_call": base, "qemu_transaction": txn}).finish()  # fmt: skip
    row.notes.append(
        f"rbd stun: QEMU's own transaction of internal snapshots of both disks (one after "
        f"the other inside QEMU, no pause): median {median(txn) * 1000:.1f} ms"
    )
    row.notes.append(
        "rbd stun: vvhost's pause-to-resume window (the RBD snapshots of both disks taken "
        "at once: one monitor proposal) vs libvirt's whole external snapshot call onto "
        "local qcow2 overlays over the RBD disks"
    )
    return [row]


def _running_vm(
    lab: Lab, guest: GuestImage, work: str, protocol: str, vols: Volumes
) -> tuple[VmManager, dict[str, str]]:
    """``bench`` with two 4 GiB disks holding 1 GiB each, running; (manager, target -> vvol)."""
    log = os.path.join(work, "bench.serial")
    args = ["vm", "create", "bench", "--datastore", "ds", "--memory", "256"]
    args += ["--disk", "4G", "--disk", "4G", "--protocol", protocol]
    args += ["--kernel", guest.kernel, "--initrd", guest.initrd, "--serial-log", log]
    args += ["--cmdline", guest_cmdline(["size:vdb"], keep_running=True), "--json"]
    out = lab.vvhost("kvm1", *args)
    check(out.returncode == 0, out.stderr)
    vms = VmManager(HostConfig.load(lab.confs["kvm1"]), lab.api)
    try:
        disks = {d["target"]: d["vvol"] for d in vms.show("bench")["disks"]}
        for i, vvol in enumerate(disks.values()):
            where = where_of(lab.api.vvol(vvol))
            if where.startswith("/"):
                write_spread(where, WRITTEN, seed=11 + i)
            else:
                vols.write_spread(where, WRITTEN, seed=11 + i)
        vms.start("bench")
        wait_line(log, "END")
    except BaseException:
        vms.close()
        raise
    return vms, disks


def _vvhost_stun(vms: VmManager, n: int, vols: Volumes, disks: dict[str, str]) -> list[float]:
    """N COW snapshots of the running VM; s1 of each disk must read as the disk did."""
    api = vms.client
    before = {t: vols.digest(where_of(api.vvol(v))) for t, v in disks.items()}
    snaps = VmSnapshots(vms)
    out = []
    for i in range(n):
        point = snaps.take("bench", f"s{i + 1}")
        check(point["running"], "the VM was not running during the snapshot")
        check(point["mode"] == "cow", f"a {point['mode']} snapshot, not cow")
        out.append(float(point["stun_ms"]) / 1000)
    for target in disks:
        same = vols.digest(where_of(api.vvol(f"bench.{target}@s1"))) == before[target]
        check(same, f"{target}@s1 does not read as {target} did")
    return out


def _qemu_transaction(dom: Any, n: int) -> list[float]:
    """N QMP transactions of ``blockdev-snapshot-internal-sync`` over every RBD disk's
    format node (libvirt names them ``libvirt-<source index>-format``); then the
    snapshots go again, by name, through QEMU."""

    def qmp(execute: str, arguments: dict[str, Any]) -> Any:
        cmd = json.dumps({"execute": execute, "arguments": arguments})
        reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, cmd, 0))
        check("return" in reply, f"{execute}: {reply.get('error')}")
        return reply["return"]

    nodes = [
        f"libvirt-{src.get('index')}-format"
        for src in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk/source[@protocol='rbd']")
    ]
    check(len(nodes) == 2 and all(node != "libvirt-None-format" for node in nodes), str(nodes))
    out = []
    for i in range(n):
        actions = [
            {"type": "blockdev-snapshot-internal-sync", "data": {"device": node, "name": f"txn{i}"}}
            for node in nodes
        ]
        t0 = time.perf_counter()
        qmp("transaction", {"actions": actions})
        out.append(time.perf_counter() - t0)
    for i in range(n):
        for node in nodes:
            qmp("blockdev-snapshot-delete-internal-sync", {"device": node, "name": f"txn{i}"})
    return out


def _libvirt_stun(dom: Any, work: str, disks: dict[str, str], n: int) -> list[float]:
    flags = (
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
    )
    out = []
    for i in range(n):
        xml = "<domainsnapshot><disks>"
        for target in disks:
            path = os.path.join(work, f"ovl{i}-{target}.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(DISK)], check=True)
            xml += (
                f"<disk name='{target}' snapshot='external' type='file'>"
                f"<driver type='qcow2'/><source file='{path}'/></disk>"
            )
        xml += "</disks></domainsnapshot>"
        t0 = time.perf_counter()
        dom.snapshotCreateXML(xml, flags)
        out.append(time.perf_counter() - t0)
    return out


def _revert(
    vms: VmManager, api: Any, disks: dict[str, str], scratch: str, n: int
) -> tuple[list[float], list[float]]:
    snaps = VmSnapshots(vms)
    ours: list[float] = []
    copies: list[float] = []
    for i in range(n):
        point = f"s{(i % 3) + 1}"
        snap_paths = {t: api.vvol(f"bench.{t}@{point}")["path"] for t in disks}
        drop_caches()
        t0 = time.perf_counter()
        snaps.revert("bench", point)
        ours.append(time.perf_counter() - t0)
        for target, vvol in disks.items():
            same = content_digest(api.vvol(vvol)["path"]) == content_digest(snap_paths[target])
            check(same, f"{target} does not read as {point} after the revert")
        copies.append(timed_convert(snap_paths, scratch))
    return ours, copies
