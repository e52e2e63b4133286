"""VM boot: time from starting a 2-disk VM (``vvhost vm start``: binds when the
disks' protocol needs it, then ``dom.create()``; the hook binds on prepare and
unbinds on release) to the guest's first line on the serial console, for a VM on
vvols, against the same VM on local raw files started with ``dom.create()``.
Two groups: vvols over iSCSI (``vm-boot``), and vvols on an RBD array of a
private Ceph cluster opened by QEMU's own librbd through the ``rbd`` endpoint
(``vm-boot-rbd``).

One control plane and one lab host (a private libvirtd) with the hook installed.
``bench`` is made by ``vvhost vm create`` (64M + 32M); ``plain`` is its inactive
XML with another name, no ``<metadata>`` (so the hook passes it through without
calling the control plane), no UUID, the default QEMU (not vvhost's wrapper),
``type='file'`` sparse raw disks of the same sizes and its own serial log; same
kernel, initrd and command line.  The same pattern is written into both vdb's;
both guests checksum vdb (the sums must agree) and power off by themselves.  One
untimed start of each first, then N rounds in alternating order.  The hook's own
share: the installed hook script fed the domain XML on stdin, as libvirt runs it,
while the VM is off.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import libvirt

from tests.vmlab import Lab, running_lab
from vvhost.client import Client
from vvhost.guest import GuestReport, build_guest, guest_cmdline, parse_serial
from vvhost.host import domainxml as dx
from vvhost.host import qemuwrap
from vvhost.host.config import HostConfig
from vvhost.host.install import HOOK_NAME
from vvhost.host.vms import VmManager

from .cephbench import Volumes, ceph_pool, where_of
from .common import MiB, Result, VerifyError, check, fill_block, median, private_dir

if TYPE_CHECKING:
    from vvhost.cephlab import CephLab

REPS = 5
HOST = "kvm1"
SIZES = {"vda": 64, "vdb": 32}  # MiB
POLL = 0.005
OFF_TIMEOUT = 120.0
RELEASE_GRACE = 10.0


def plain_xml(xml: str, work: str) -> tuple[str, str]:
    """The ``plain`` twin of ``bench``'s inactive XML, and its serial log path."""
    root = dx.parse(xml)
    name, source = root.find("name"), root.find("devices/serial/source")
    if name is None or source is None:
        raise VerifyError("bench's XML has no name or no serial log")
    name.text = "plain"
    for tag in ("uuid", "metadata"):
        for el in root.findall(tag):
            root.remove(el)
    devices = root.find("devices")
    for emulator in devices.findall("emulator") if devices is not None else []:
        if emulator.text == qemuwrap.PATH:  # plain runs the default QEMU
            devices.remove(emulator)  # type: ignore[union-attr]
    for target, mib in SIZES.items():
        path = os.path.join(work, f"plain-{target}.raw")
        with open(path, "wb") as fh:
            fh.truncate(mib * MiB)
        dx.set_source(root, target, {"protocol": "file", "path": path})
    log = os.path.join(work, "plain.serial")
    source.set("path", log)
    return dx.tostring(root), log


def boot(dom: Any, start: Callable[[], Any], log: str) -> tuple[float, float, GuestReport]:
    """Start ``dom`` by ``start()``; (seconds to the first serial line, seconds in
    ``start()``, report)."""
    if os.path.exists(log):
        os.unlink(log)
    t0 = time.perf_counter()
    start()
    created = time.perf_counter() - t0
    first = None
    while first is None:
        try:
            with open(log, "rb") as fh:
                if b"\n" in fh.read():
                    first = time.perf_counter() - t0
        except FileNotFoundError:
            pass
        check(time.perf_counter() - t0 < OFF_TIMEOUT, f"{dom.name()}: no serial output")
        if first is None:
            time.sleep(POLL)
    deadline = time.monotonic() + OFF_TIMEOUT
    while dom.isActive():
        check(time.monotonic() < deadline, f"{dom.name()} did not power off")
        time.sleep(0.05)
    with open(log, errors="replace") as fh:
        report = parse_serial(fh.read())
    check(report.ok, f"{dom.name()}: guest failed: {report}")
    check(report.sizes.get("vdb") == SIZES["vdb"] * MiB, f"{dom.name()}: vdb size {report}")
    return first, created, report


def released(api: Client) -> None:
    """The release hook ran: nothing stays bound (a short grace for libvirt's stop path)."""
    deadline = time.monotonic() + RELEASE_GRACE
    while api.bindings():
        check(time.monotonic() < deadline, f"bindings left after stop: {api.bindings()}")
        time.sleep(0.05)


def run_hook(hook: str, name: str, op: str, sub: str, xml: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [hook, name, op, sub, "-"], input=xml, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    check(done.returncode == 0, f"hook {op} {name} failed: {done.stderr.strip()}")
    return elapsed


def hook_times(
    api: Client, hook: str, xml: str, plain: str, n: int
) -> tuple[list[float], list[float], list[float]]:
    """(prepare, release, pass-through prepare of ``plain``) seconds, ``n`` each."""
    prep, rel, passing = [], [], []
    for _ in range(n):
        prep.append(run_hook(hook, "bench", "prepare", "begin", xml))
        check(len(api.bindings(host=HOST)) == len(SIZES), "hook prepare did not bind both")
        rel.append(run_hook(hook, "bench", "release", "end", xml))
        check(api.bindings() == [], "hook release left bindings")
        passing.append(run_hook(hook, "plain", "prepare", "begin", plain))
        check(api.bindings() == [], "the hook bound something for plain")
    return prep, rel, passing


VDB_DATA = fill_block(seed=5, stamp=1, size=MiB)  # written at 0 and 16 MiB of both vdb's


def run(reps: int | None = None) -> list[Result]:
    """iSCSI vvols vs local raw files."""
    with private_dir("vm-boot") as work:
        return [_bench(work, "iscsi", reps or REPS)]


def run_rbd(reps: int | None = None) -> list[Result]:
    """RBD vvols (QEMU's librbd, rbd endpoint) vs local raw files."""
    with private_dir("vm-boot-rbd") as work, ceph_pool(work) as ceph:
        return [_bench(work, "rbd", reps or REPS, ceph)]


def _bench(work: str, protocol: str, n: int, ceph: tuple[CephLab, str] | None = None) -> Result:
    guest = build_guest()
    vols = Volumes(ceph[0] if ceph else None)
    times: dict[str, list[float]] = {"vvhost": [], "plain": []}
    starts: dict[str, list[float]] = {"vvhost": [], "plain": []}
    with running_lab(os.path.join(work, "lab"), guest, capacity="2G", rbd=ceph) as lab:
        api = lab.api
        conf = lab.confs[HOST]
        hook = os.path.join(lab.hosts[HOST].hooks_dir, "qemu.d", HOOK_NAME)
        log = os.path.join(work, "bench.serial")
        args = ["vm", "create", "bench", "--datastore", "ds", "--memory", "256"]
        for mib in SIZES.values():
            args += ["--disk", f"{mib}M"]
        args += ["--protocol", protocol, "--kernel", guest.kernel, "--initrd", guest.initrd]
        args += ["--cmdline", guest_cmdline(["sum:vdb"]), "--serial-log", log, "--json"]
        out = lab.vvhost(HOST, *args)
        check(out.returncode == 0, f"vm create: {out.stderr.strip()}")
        vms = VmManager(HostConfig.load(conf), api)
        try:
            dom = vms.domain("bench")
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            check(dx.has_vvhost(xml), "bench has no vvhost metadata")
            check(api.bindings() == [], "bench bound before its first start")
            pxml, plog = plain_xml(xml, work)
            check(not dx.has_vvhost(pxml), "plain still carries vvhost metadata")
            _same_vdb(lab, vols, os.path.join(work, "plain-vdb.raw"))
            pdom = vms.conn.defineXML(pxml)
            sides = {
                "vvhost": (dom, lambda: vms.start("bench"), log),
                "plain": (pdom, pdom.create, plog),
            }
            sums: dict[str, str] = {}
            for rnd in range(-1, n):  # round -1: warm-up, untimed
                order = ["vvhost", "plain"] if rnd % 2 == 0 else ["plain", "vvhost"]
                for side in order:
                    first, started, report = boot(*sides[side])
                    if side == "vvhost":
                        released(api)
                    sums.setdefault(side, report.checksums.get("vdb", ""))
                    check(report.checksums.get("vdb") == sums[side], f"{side}: vdb changed")
                    if rnd >= 0:
                        times[side].append(first)
                        starts[side].append(started)
            check(sums["vvhost"] == sums["plain"], f"vdb differs: {sums}")
            prep, rel, passing = hook_times(api, hook, xml, pxml, n)
            check(api.audit()["ok"], f"audit after the benchmark: {api.audit()}")
        finally:
            vms.close()
    ours, plain = median(times["vvhost"]), median(times["plain"])
    p, r, pt = median(prep), median(rel), median(passing)
    row = Result(
        f"vm start to first serial line: {protocol} vvols vs local raw",
        "ratio <= 1.3",
        1.3,
        ours,
        plain,
        samples={**times, "hook_prepare": prep, "hook_release": rel, "hook_passthrough": passing},
    ).finish()
    row.notes.append(
        f"vm-boot {protocol}: medians of {n} alternating rounds after one warm-up; the start "
        f"call alone {median(starts['vvhost']) * 1e3:.0f} ms (vvhost vm start) vs "
        f"{median(starts['plain']) * 1e3:.0f} ms (plain dom.create())"
    )
    row.notes.append(
        f"vm-boot {protocol}: hook prepare {p * 1e3:.0f} ms ({p / ours * 100:.0f}% of the "
        f"vvhost start-to-first-line), release {r * 1e3:.0f} ms; the hook passing a domain "
        f"without metadata through (paid by plain too) {pt * 1e3:.0f} ms"
    )
    return row


def _same_vdb(lab: Lab, vols: Volumes, plain: str) -> None:
    """The same known data in bench's vdb (a file or an RBD image) and plain's."""
    where = where_of(lab.api.vvol("bench.vdb"))
    for target in (where, plain):
        for off in (0, 16 * MiB):
            vols.write_at(target, off, VDB_DATA)
    check(vols.digest(where) == vols.digest(plain), "bench's and plain's vdb differ")
