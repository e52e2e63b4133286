"""A host that hangs is fenced and its VM comes back on another host, with real
daemons: the guest on kvm1 counts on its disk; kvm1's QEMU is frozen (SIGSTOP of
its PID), kvm1 is fenced, the VM is recovered on kvm2 from its config vvol, and
the frozen QEMU is let go (SIGCONT).  Its late writes must not reach the vvol
(iSCSI: its target is gone, sessions included; NBD: its TLS daemon is stopped and
its certificate forgotten; RBD: its Ceph identity is removed and its live session
blocklisted), while the recovered guest finds the data written before and counts on."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.patterns import Patterns, Target
from tests.vmlab import Lab, create_vm, log_text, running_lab, wait_line
from vvhost.cephlab import CephLab
from vvhost.daemon import free_port
from vvhost.guest import GuestImage, guest_cmdline, parse_serial, pattern_bytes

MiB = 1 << 20
SECTOR = 512
OLD_OFF, NEW_OFF = 8, 10  # MiB into vda: the frozen guest's counter, the recovered one's
CMDS = ["write:vdb:Pre:0:4", f"counter:vda:{OLD_OFF}"]
DISKS = ("16M", "8M")


def qemu_pid(lab: Lab, host: str, name: str) -> int:
    with open(lab.hosts[host].path("run", "qemu", f"{name}.pid"), encoding="ascii") as fh:
        pid = int(fh.read().strip())
    with open(f"/proc/{pid}/comm", encoding="ascii") as fh:
        assert "qemu" in fh.read()
    return pid


def targets(lab: Lab, name: str) -> dict[str, Target]:
    """The VM's disks as Patterns targets: a file's path, or an RBD image's vvol."""
    out: dict[str, Target] = {}
    for v in lab.api.vvols():
        if v["name"].startswith(f"{name}."):
            info: dict[str, Any] = lab.api.vvol(v["id"])
            out[v["name"].split(".")[-1]] = info.get("path") or info
    return out


def read_counter(pat: Patterns, target: Target, off_mib: int) -> int | None:
    """The counter the guest's ``counter:DISK:off_mib`` last wrote there."""
    words = pat.read(target, off_mib * MiB, SECTOR).split()
    if len(words) == 2 and words[0] == b"vvcounter" and words[1].isdigit():
        return int(words[1])
    return None


def redefine(lab: Lab, host: str, name: str, cmds: list[str], log: str) -> None:
    """The recovered guest checks the old data and counts elsewhere, logging to ``log``."""
    conn = libvirt.open(lab.hosts[host].uri)
    try:
        root = ET.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        cmdline = root.find("os/cmdline")
        source = root.find("devices/serial/source")
        assert cmdline is not None and source is not None
        cmdline.text = guest_cmdline(cmds, keep_running=True)
        source.set("path", log)
        conn.defineXML(ET.tostring(root, encoding="unicode"))
    finally:
        conn.close()


def wait_counter(pat: Patterns, vda: Target, above: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = read_counter(pat, vda, NEW_OFF)
        if n is not None and n > above:
            return n
        assert time.monotonic() < deadline, f"the recovered guest's counter stays at {n}"
        time.sleep(0.2)


@pytest.fixture
def rbdlab(
    tmp_path: Path, guest: GuestImage, ceph_cluster: CephLab, ceph_pool: str
) -> Iterator[Lab]:
    with running_lab(str(tmp_path), guest, rbd=(ceph_cluster, ceph_pool)) as lab:
        yield lab


@pytest.mark.parametrize("protocol", ["iscsi", "nbd"])
def test_fenced_hosts_late_writes_are_refused_and_the_vm_runs_elsewhere(
    lab: Lab, protocol: str
) -> None:
    if protocol == "nbd":  # TCP with TLS: a daemon and a certificate per host
        lab.api.pe_delete("nbd0")
        lab.api.pe_create("tls0", "nbd", portal=f"127.0.0.1:{free_port()}")
    fence_and_recover(lab, protocol, Patterns())


def test_fenced_rbd_hosts_late_writes_are_refused(rbdlab: Lab, ceph_cluster: CephLab) -> None:
    pat = Patterns()
    pat.ceph = (ceph_cluster.conf, ceph_cluster.admin_keyring)
    blocked = fence_and_recover(rbdlab, "rbd", pat)
    assert blocked  # the frozen QEMU's librbd session
    with ceph_cluster.admin() as admin:
        listed = admin.blocklist_ls()
        assert set(blocked) <= set(listed)
        assert "client.vvhost-kvm1" not in admin.auth_ls()


def fence_and_recover(lab: Lab, protocol: str, pat: Patterns) -> list[str]:
    """The scenario of this module; returns the Ceph addresses the fence blocklisted.
    ``lab``: a vmlab Lab (kvm2 is added here) or a tests/netlab.py NetLab with both."""
    if "kvm2" not in lab.hosts:
        lab.add_host("kvm2", protocol=protocol)
    log = create_vm(lab, "vm1", protocol, CMDS, disks=DISKS, keep_running=True)
    config = next(v["id"] for v in lab.api.vvols() if v["name"] == "vm1.config")
    out = lab.vvhost("kvm1", "vm", "start", "vm1")
    assert out.returncode == 0, out.stderr
    wait_line(log, "counter 20")
    disks = targets(lab, "vm1")
    refused = lab.vvhost("kvm2", "vm", "recover", config, "--on", "kvm2")
    assert refused.returncode != 0 and "not fenced" in refused.stderr  # kvm1 runs it
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

    pid = qemu_pid(lab, "kvm1", "vm1")
    os.kill(pid, signal.SIGSTOP)  # alone, a freeze stops nothing for good
    before = read_counter(pat, disks["vda"], OLD_OFF) or 0
    os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while (read_counter(pat, disks["vda"], OLD_OFF) or 0) <= before + 5:
        assert time.monotonic() < deadline, "the guest did not go on counting after SIGCONT"
        time.sleep(0.2)

    os.kill(pid, signal.SIGSTOP)
    try:
        fenced = lab.api.host_fence("kvm1")
        assert fenced["bindings"] == 2
        blocked: list[str] = fenced["blocklisted"]
        assert {b["state"] for b in lab.api.bindings(host="kvm1")} == {"fenced"}
        frozen_at = read_counter(pat, disks["vda"], OLD_OFF)
        assert frozen_at is not None and frozen_at >= 20

        log2 = os.path.join(lab.tmp, "vm1-recovered.serial")
        out = lab.vvhost("kvm2", "vm", "register", "--config-vvol", config)
        assert out.returncode == 0, out.stderr
        redefine(lab, "kvm2", "vm1", ["verify:vdb:Pre:0:4", f"counter:vda:{NEW_OFF}"], log2)
        out = lab.vvhost("kvm2", "vm", "recover", config, "--on", "kvm2", "--json")
        assert out.returncode == 0, out.stderr
        assert '"kvm1"' in out.stdout  # recovered from the fenced host
        wait_line(log2, "counter 10")
        assert parse_serial(log_text(log2)).results["verify:vdb:Pre:0:4"] == "ok"
    finally:
        os.kill(pid, signal.SIGCONT)  # the frozen QEMU goes on where it stopped

    # its late writes are refused: its counter on the vvol stays where it was,
    # while the recovered guest's goes on
    seen = wait_counter(pat, disks["vda"], 0)
    time.sleep(5)
    assert read_counter(pat, disks["vda"], OLD_OFF) == frozen_at
    assert wait_counter(pat, disks["vda"], seen) > seen
    assert pat.read(disks["vdb"], 0, 4 * MiB) == pattern_bytes("Pre", 0, 4)
    assert {(b["host"], b["state"]) for b in lab.api.bindings()} == {
        ("kvm1", "fenced"),
        ("kvm2", "active"),
    }

    for host in ("kvm1", "kvm2"):  # kvm1's release cannot unbind (fenced): nothing breaks
        conn = libvirt.open(lab.hosts[host].uri)
        try:
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName("vm1").destroy()
        finally:
            conn.close()
    assert lab.api.host_unfence("kvm1")["bindings_dropped"] == 2
    assert lab.api.bindings() == []
    assert read_counter(pat, disks["vda"], OLD_OFF) == frozen_at
    assert lab.api.audit()["ok"]
    return blocked
