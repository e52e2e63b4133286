"""VM boot: time from ``virsh start`` (``dom.create()``) to the guest's first line on
the serial console, for a 2-disk VM on vvols over iSCSI (the vvhost hook binds on
prepare and unbinds on release), against the same VM on local raw files.

One control plane and one lab host (a private libvirtd) with the hook installed.
``bench`` is made by ``vvhost vm create`` (64M + 32M over iSCSI); ``plain`` is its
inactive XML with another name, no ``<metadata>`` (so the hook passes it through
without calling the control plane), no UUID, ``type='file'`` sparse raw disks of the
same sizes and its own serial log; same kernel, initrd and command line.  Both
guests checksum vdb and power off by themselves.  One untimed start of each first,
then N rounds in alternating order.  The hook's own share: the installed hook
script fed the domain XML on stdin, as libvirt runs it, while the VM is off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import libvirt

from vvhost.client import Client
from vvhost.daemon import free_port
from vvhost.guest import GuestReport, build_guest, guest_cmdline, parse_serial
from vvhost.host import domainxml as dx
from vvhost.host.config import HostConfig
from vvhost.host.install import HOOK_NAME, install
from vvhost.labhost import LibvirtHost

from .common import MiB, Result, VerifyError, check, median, private_dir, server

REPS = 5
HOST = "kvm1"
HOST_IQN = "iqn.2026-11.bench.vvhost:kvm1"
SIZES = {"vda": 64, "vdb": 32}  # MiB
POLL = 0.005
OFF_TIMEOUT = 120.0
RELEASE_GRACE = 10.0


def vvhost_cli(conf: str, *args: str) -> str:
    env = {**os.environ, "VVHOST_HOST_CONF": conf}
    done = subprocess.run(
        [sys.executable, "-m", "vvhost", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"vvhost {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


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
    for target, mib in SIZES.items():
        path = os.path.join(work, f"plain-{target}.raw")
        with open(path, "wb") as fh:
            fh.truncate(mib * MiB)
        dx.set_source(root, target, {"protocol": "file", "path": path})
    log = os.path.join(work, "plain.serial")
    source.set("path", log)
    return dx.tostring(root), log


def boot(dom: Any, log: str) -> tuple[float, float, GuestReport]:
    """Start ``dom``; (seconds to the first serial line, seconds in create(), report)."""
    if os.path.exists(log):
        os.unlink(log)
    t0 = time.perf_counter()
    dom.create()
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


def run(reps: int | None = None) -> list[Result]:
    n = reps or REPS
    guest = build_guest()
    times: dict[str, list[float]] = {"vvhost": [], "plain": []}
    creates: dict[str, list[float]] = {"vvhost": [], "plain": []}
    with private_dir("vm-boot") as work:
        with server(os.path.join(work, "state"), private_tgtd=True) as (proc, api):
            api.host_add(HOST, HOST_IQN)
            api.pe_create("iscsi0", "iscsi", portal=f"127.0.0.1:{free_port()}")
            api.container_create("pool", "4G")
            api.datastore_create("ds", "2G")
            lab = LibvirtHost(HOST, os.path.join(work, HOST)).start()
            try:
                conf = os.path.join(work, f"{HOST}.conf")
                HostConfig(name=HOST, server=f"unix://{proc.socket}", libvirt=lab.uri).save(conf)
                install(lab.hooks_dir, conf)
                lab.sighup()  # and wait until libvirtd has rescanned hooks_dir
                hook = os.path.join(lab.hooks_dir, "qemu.d", HOOK_NAME)
                args = ["vm", "create", "bench", "--datastore", "ds", "--memory", "256"]
                for mib in SIZES.values():
                    args += ["--disk", f"{mib}M"]
                args += ["--protocol", "iscsi", "--kernel", guest.kernel, "--initrd", guest.initrd]
                args += ["--cmdline", guest_cmdline(["sum:vdb"])]
                args += ["--serial-log", os.path.join(work, "bench.serial"), "--json"]
                vvhost_cli(conf, *args)
                conn = lab.connect()
                dom = conn.lookupByName("bench")
                xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                check(dx.has_vvhost(xml), "bench has no vvhost metadata")
                check(api.bindings() == [], "bench bound before its first start")
                pxml, plog = plain_xml(xml, work)
                check(not dx.has_vvhost(pxml), "plain still carries vvhost metadata")
                pdom = conn.defineXML(pxml)
                vms = {"vvhost": (dom, os.path.join(work, "bench.serial")), "plain": (pdom, plog)}
                sums: dict[str, str] = {}
                for rnd in range(-1, n):  # round -1: warm-up, untimed
                    order = ["vvhost", "plain"] if rnd % 2 == 0 else ["plain", "vvhost"]
                    for side in order:
                        first, created, report = boot(*vms[side])
                        if side == "vvhost":
                            released(api)
                        sums.setdefault(side, report.checksums.get("vdb", ""))
                        check(report.checksums.get("vdb") == sums[side], f"{side}: vdb changed")
                        if rnd >= 0:
                            times[side].append(first)
                            creates[side].append(created)
                check(sums["vvhost"] == sums["plain"], f"vdb differs: {sums}")
                prep, rel, passing = hook_times(api, hook, xml, pxml, n)
                check(api.audit()["ok"], f"audit after the benchmark: {api.audit()}")
            finally:
                lab.stop()
    ours, plain = median(times["vvhost"]), median(times["plain"])
    p, r, pt = median(prep), median(rel), median(passing)
    row = Result(
        "vm start to first serial line: iscsi vvols vs local raw",
        "ratio <= 1.3",
        1.3,
        ours,
        plain,
        samples={**times, "hook_prepare": prep, "hook_release": rel, "hook_passthrough": passing},
    ).finish()
    row.notes.append(
        f"vm-boot: medians of {n} alternating rounds after one warm-up; dom.create() alone "
        f"{median(creates['vvhost']) * 1e3:.0f} ms (vvhost) vs "
        f"{median(creates['plain']) * 1e3:.0f} ms (plain)"
    )
    row.notes.append(
        f"hook prepare {p * 1e3:.0f} ms ({p / ours * 100:.0f}% of the vvhost "
        f"start-to-first-line), release {r * 1e3:.0f} ms; the hook passing a domain "
        f"without metadata through (paid by plain too) {pt * 1e3:.0f} ms"
    )
    return [row]
