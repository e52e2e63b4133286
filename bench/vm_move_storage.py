"""VM storage moves between containers on two arrays: ``vm-move-storage``: each on
its own loop-mounted XFS (so nothing is reflinked from one to the other);
``vm-move-storage-rbd``: from a ``dir`` array on XFS to an RBD array of a private
Ceph cluster (stopped VM; the points become RBD snapshots), against ``qemu-img
convert`` of the three points from the files into RBD images of the same pool
(QEMU's librbd); the way back (RBD -> dir) is timed and reported too.

One VM, one 2 GiB disk over iSCSI: 512 MiB written, snapshot s1, 128 MiB more,
snapshot s2, 128 MiB more (the live data).  ``vvhost vm move-storage`` moves the
disk with both points to the other container and back, N times each way:

- stopped: every point by copy-diffs (only what changed since the previous one),
  the live data likewise;
- running: the points the same way, the live data by libvirt's block copy onto the
  new vvol and a pivot (QEMU's iSCSI client sees every block as data, so the copy
  goes through the whole 2 GiB disk);

against ``qemu-img convert`` of the same three points (s1, s2, live) into raw files
in the destination array's directory.  Every moved point must read the same as
before.  The ratio is time vvhost / time qemu-img; "throughput at least 0.8x" is a
ratio of at most 1.25.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from typing import Any

from tests.fsfixtures import loop_capability, make_loop_fs
from tests.vmlab import running_lab, wait_line
from vvhost.client import Client
from vvhost.guest import GuestImage, build_guest, guest_cmdline
from vvhost.host.config import HostConfig
from vvhost.host.movestorage import StorageMover
from vvhost.host.vmop import VmOps
from vvhost.host.vms import VmManager
from vvhost.host.vmsnapshots import VmSnapshots

from .cephbench import Volumes, ceph_pool, where_of
from .common import (
    GiB,
    MiB,
    Result,
    check,
    drop_caches,
    median,
    private_dir,
    settle,
    skipped,
    timed_convert,
    write_spread,
)

REPS = 3
DISK = 2 * GiB
LIMIT = 1.25
TARGET = "ratio <= 1.25"
STOPPED = "xfs->xfs: vm move-storage stopped, 2 GiB disk (512 MiB, 2 snapshots) vs qemu-img convert"
RUNNING = "xfs->xfs: vm move-storage running (block copy) vs qemu-img convert of the points"
RBD_STOPPED = "dir->rbd: vm move-storage stopped, 2 GiB disk (512 MiB, 2 snapshots) vs qemu-img"
POINTS = ("s1", "s2", "now")


def run(reps: int | None = None) -> list[Result]:
    n = reps or REPS
    reason = loop_capability("xfs")
    if reason:
        return [skipped(STOPPED, TARGET, LIMIT, reason), skipped(RUNNING, TARGET, LIMIT, reason)]
    guest = build_guest()
    with (
        private_dir("vm-move") as work,
        make_loop_fs(work, "xfs", "12G") as mnt_a,
        make_loop_fs(work, "xfs", "12G") as mnt_b,
    ):
        src, dst = tempfile.mkdtemp(dir=mnt_a), tempfile.mkdtemp(dir=mnt_b)
        with running_lab(os.path.join(work, "lab"), guest, src, capacity="24G") as lab:
            log = os.path.join(work, "bench.serial")
            out = lab.vvhost("kvm1", *_create_args(guest, log))
            check(out.returncode == 0, out.stderr)
            lab.api.array_add("a2", "dir", dst)
            lab.api.container_create("pool2", "24G", arrays=["a2"])
            lab.api.datastore_extend("ds", "48G")
            vms = VmManager(HostConfig.load(lab.confs["kvm1"]), lab.api)
            try:
                digests, data = _prepare(vms, lab.api, Volumes())
                base = _qemu_img(lab.api, dst, n)
                stopped = _moves(vms, lab.api, digests, n)
                vms.start("bench")
                wait_line(log, "END")
                running = _moves(vms, lab.api, digests, n)
                vms.stop("bench", force=True)
                check(lab.api.audit()["ok"], "audit after the benchmark")
            finally:
                vms.close()
    rows = [
        Result(STOPPED, TARGET, LIMIT, median(stopped), median(base), samples={
            "vvhost": stopped, "qemu_img_convert": base}).finish(),
        Result(RUNNING, TARGET, LIMIT, median(running), median(base), samples={
            "vvhost": running, "qemu_img_convert": base}).finish(),
    ]  # fmt: skip
    for row in rows:
        assert row.measured is not None and row.baseline is not None
        row.notes.append(
            f"{row.name.split(',')[0]}: {data / MiB:.0f} MiB of point data; "
            f"vvhost {data / row.measured / MiB:.0f} MiB/s, "
            f"qemu-img {data / row.baseline / MiB:.0f} MiB/s"
        )
    return rows


def _prepare(vms: VmManager, api: Client, vols: Volumes) -> tuple[dict[str, str], int]:
    """Write the points; return each point's content digest and their data bytes."""
    snaps = VmSnapshots(vms)
    path = api.vvol("bench.vda")["path"]
    write_spread(path, 512 * MiB, seed=1)
    snaps.take("bench", "s1")
    write_spread(path, 128 * MiB, seed=2, offset=MiB)
    snaps.take("bench", "s2")
    write_spread(path, 128 * MiB, seed=3, offset=2 * MiB)
    files = _files(vms, api)
    data = sum(int(api.vvol(v)["used"]) for v in _vvols(vms).values())
    return {p: vols.digest(f) for p, f in files.items()}, data


def _vvols(vms: VmManager) -> dict[str, str]:
    """point (or "now") -> the vvol holding it."""
    _dom, doc = VmOps(vms).inspect("bench")
    out = {p.name: p.disks["vda"] for p in doc.points}
    out["now"] = doc.disks["vda"]
    return out


def _files(vms: VmManager, api: Client) -> dict[str, str]:
    """point -> its file (dir) or RBD spec (rbd)."""
    return {p: where_of(api.vvol(v)) for p, v in _vvols(vms).items()}


def _qemu_img(api: Client, dst: str, n: int) -> list[float]:
    """Copy the three points with qemu-img convert, N times."""
    files = {p: str(api.vvol(v)["path"]) for p, v in _point_ids(api).items()}
    out = []
    for _ in range(n):
        out.append(timed_convert(files, dst))
        settle()
    return out


def _point_ids(api: Client) -> dict[str, str]:
    return {
        "s1": api.vvol("bench.vda@s1")["id"],
        "s2": api.vvol("bench.vda@s2")["id"],
        "now": api.vvol("bench.vda")["id"],
    }


def _moves(vms: VmManager, api: Client, digests: dict[str, str], n: int) -> list[float]:
    """Move the VM's storage to the other container N times; check every point."""
    out = []
    for _ in range(n):
        here = api.vvol("bench.vda")["container"]
        out.append(_move(vms, api, Volumes(), digests, "pool2" if here == "pool" else "pool"))
    return out


def _move(vms: VmManager, api: Client, vols: Volumes, digests: dict[str, str], there: str) -> float:
    """Move the VM's storage to container ``there``; check every point; the seconds."""
    here = api.vvol("bench.vda")["container"]
    drop_caches()
    t0 = time.perf_counter()
    result: dict[str, Any] = StorageMover(vms).move("bench", there)
    seconds = time.perf_counter() - t0
    files = _files(vms, api)
    for point in POINTS:
        same = vols.digest(files[point]) == digests[point]
        check(same, f"{point} does not read the same after a move to {there}")
    check(api.vvols(container=here) == [], f"container {here} still holds vvols")
    check(result["container"] == there, "moved elsewhere")
    settle()
    return seconds


def run_rbd(reps: int | None = None) -> list[Result]:
    n = reps or REPS
    reason = loop_capability("xfs")
    if reason:
        return [skipped(RBD_STOPPED, TARGET, LIMIT, reason)]
    guest = build_guest()
    with (
        private_dir("vm-move-rbd") as work,
        make_loop_fs(work, "xfs", "12G") as mnt,
        ceph_pool(work) as (ceph, pool),
    ):
        vols = Volumes(ceph)
        src = tempfile.mkdtemp(dir=mnt)
        with running_lab(os.path.join(work, "lab"), guest, src, capacity="24G") as lab:
            out = lab.vvhost("kvm1", *_create_args(guest, os.path.join(work, "bench.serial")))
            check(out.returncode == 0, out.stderr)
            settings = {"pool": pool, "conf": ceph.conf, "keyring": ceph.admin_keyring}
            lab.api.array_add("ceph", "rbd", settings)
            lab.api.container_create("rpool", "24G", arrays=["ceph"])
            lab.api.pe_create("rbd0", "rbd", array="ceph")
            lab.api.datastore_extend("ds", "48G")
            vms = VmManager(HostConfig.load(lab.confs["kvm1"]), lab.api)
            try:
                digests, data = _prepare(vms, lab.api, vols)
                base = _qemu_img_rbd(lab.api, vols, pool, n)
                there: list[float] = []
                back: list[float] = []
                for _ in range(n):
                    there.append(_move(vms, lab.api, vols, digests, "rpool"))
                    check(not _files(vms, lab.api)["s1"].startswith("/"), "s1 is not on RBD")
                    back.append(_move(vms, lab.api, vols, digests, "pool"))
                check(lab.api.audit()["ok"], "audit after the benchmark")
            finally:
                vms.close()
    samples = {"vvhost": there, "qemu_img_convert": base, "vvhost_back_to_dir": back}
    row = Result(RBD_STOPPED, TARGET, LIMIT, median(there), median(base), samples=samples)
    row.finish()
    assert row.measured is not None and row.baseline is not None
    row.notes.append(
        f"dir->rbd: {data / MiB:.0f} MiB of point data; vvhost {data / row.measured / MiB:.0f} "
        f"MiB/s, qemu-img convert into RBD images {data / row.baseline / MiB:.0f} MiB/s; "
        f"the way back rbd->dir (vvhost) {median(back):.2f} s"
    )
    return [row]


def _create_args(guest: GuestImage, log: str) -> list[str]:
    args = ["vm", "create", "bench", "--datastore", "ds", "--memory", "256"]
    args += ["--disk", "2G", "--protocol", "iscsi", "--kernel", guest.kernel]
    args += ["--initrd", guest.initrd, "--serial-log", log, "--json"]
    return args + ["--cmdline", guest_cmdline(["size:vda"], keep_running=True)]


def _qemu_img_rbd(api: Client, vols: Volumes, pool: str, n: int) -> list[float]:
    """Copy the three points from their files into new RBD images with qemu-img
    convert (page cache dropped first), N times; the copies must read the same."""
    files = {p: where_of(api.vvol(v)) for p, v in _point_ids(api).items()}
    want = {p: vols.digest(f) for p, f in files.items()}
    out = []
    for rnd in range(n):
        drop_caches()
        t0 = time.perf_counter()
        for point, src in files.items():
            dst = vols.qemu_uri(f"{pool}/copy-{point}")
            subprocess.run(["qemu-img", "convert", "-O", "raw", src, dst], check=True)
        out.append(time.perf_counter() - t0)
        for point in files:
            if rnd == 0:
                same = vols.digest(f"{pool}/copy-{point}") == want[point]
                check(same, f"qemu-img made another {point}")
            vols.rbd_cli("rm", "--no-progress", f"{pool}/copy-{point}")
        settle()
    return out
