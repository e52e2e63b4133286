"""A lab for VM tests: a control plane, private libvirtd hosts with the vvhost hook,
the test guest, and helpers to drive guests (boot, wait, talk to them)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt

from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.guest import GuestImage, guest_cmdline, parse_serial
from vvhost.host.config import HostConfig
from vvhost.host.install import install
from vvhost.labhost import LibvirtHost

if TYPE_CHECKING:
    from vvhost.cephlab import CephLab

MiB = 1 << 20
HOST_IQN = "iqn.2026-11.test.vvhost:kvm"


@dataclass
class Lab:
    tmp: str
    server: ServerProcess
    api: Client
    guest: GuestImage
    hosts: dict[str, LibvirtHost]
    confs: dict[str, str]

    def vvhost(
        self, host: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VVHOST_HOST_CONF": self.confs[host], **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "vvhost", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )

    def add_host(
        self,
        name: str,
        server: str | None = None,
        protocol: str = "iscsi",
        migration: bool = False,
    ) -> LibvirtHost:
        """Start lab host ``name`` with the hook; ``migration``: it also takes
        peer-to-peer migrations on 127.0.0.1 (TCP listener, own migration ports)."""
        ports: dict[str, Any] = {}
        if migration:
            mig = free_port()
            ports = {"tcp_port": free_port(), "migration_ports": (mig, mig + 5)}
        h = LibvirtHost(name, os.path.join(self.tmp, name), **ports)
        self.hosts[name] = h  # stopped by the fixture even if what follows fails
        h.start()
        conf = os.path.join(self.tmp, f"{name}.conf")
        HostConfig(
            name=name,
            server=server or f"unix://{self.server.socket}",
            protocol=protocol,
            libvirt=h.uri,
            nbd_tls_dir=h.nbd_tls_dir,
            ceph_dir=os.path.join(self.tmp, name, "ceph"),
        ).save(conf)
        install(h.hooks_dir, conf)
        h.sighup()  # returns once libvirtd has reread its hooks
        self.confs[name] = conf
        return h


@contextmanager
def running_lab(
    tmp: str,
    guest: GuestImage,
    array_dir: str | None = None,
    capacity: str = "4G",
    rbd: tuple[CephLab, str] | None = None,
    migration: bool = False,
) -> Iterator[Lab]:
    """A control plane (private tgtd), endpoints iscsi0/nbd0/file0, hosts kvm1 and kvm2
    (kvm1 running a private libvirtd with the hook) and datastore ``ds``; its
    container lives on an array in ``array_dir`` when given (say, on XFS).

    ``rbd=(cluster, pool)``: the container lives on RBD array ``a1`` (that pool of
    that cluster, reached as its admin) instead, endpoint ``rbd0`` serves it, and
    kvm1 prefers the ``rbd`` protocol. ``migration``: kvm1 takes live migrations
    (see ``Lab.add_host``)."""
    server = ServerProcess(
        os.path.join(tmp, "state"), os.path.join(tmp, "cp.sock"), private_tgtd=True
    ).start()
    api = server.client()
    lab = Lab(tmp, server, api, guest, {}, {})
    try:
        for host in ("kvm1", "kvm2"):
            api.host_add(host, f"{HOST_IQN}{host[-1]}")
        api.pe_create("iscsi0", "iscsi", portal=f"127.0.0.1:{free_port()}")
        api.pe_create("nbd0", "nbd")
        api.pe_create("file0", "file", path=os.path.join(tmp, "nfs"))
        if array_dir:
            api.array_add("a1", "dir", array_dir)
        if rbd:
            cluster, pool = rbd
            settings = {"pool": pool, "conf": cluster.conf, "keyring": cluster.admin_keyring}
            api.array_add("a1", "rbd", settings)
            api.pe_create("rbd0", "rbd", array="a1")
        on_array = bool(array_dir or rbd)
        api.container_create("pool", capacity, arrays=["a1"] if on_array else None)
        api.datastore_create("ds", capacity)
        lab.add_host("kvm1", protocol="rbd" if rbd else "iscsi", migration=migration)
        yield lab
    finally:
        for h in lab.hosts.values():
            h.stop()
        api.close()
        server.stop()
        if rbd:  # hosts keep their Ceph identity while they exist: these go with the lab
            with rbd[0].admin() as ceph:
                for host in ("kvm1", "kvm2"):
                    ceph.auth_rm(f"client.vvhost-{host}")


def wait_off(lab: Lab, host: str, name: str, timeout: float = 90) -> None:
    conn = libvirt.open(lab.hosts[host].uri)
    try:
        dom = conn.lookupByName(name)
        deadline = time.monotonic() + timeout
        while dom.isActive():
            assert time.monotonic() < deadline, f"{name} did not power off"
            time.sleep(0.2)
    finally:
        conn.close()


def wait_for_end(log: str, timeout: float = 60) -> None:
    """Wait until a guest that keeps running has done its commands."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(log) or "VVTEST END" not in Path(log).read_text(errors="replace"):
        assert time.monotonic() < deadline, "the guest did not finish its commands"
        time.sleep(0.2)


def set_cmdline(lab: Lab, host: str, name: str, cmdline: str) -> None:
    """What `virsh edit` would do: change the kernel command line of the definition."""
    conn = libvirt.open(lab.hosts[host].uri)
    try:
        xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        conn.defineXML(re.sub(r"<cmdline>.*?</cmdline>", f"<cmdline>{cmdline}</cmdline>", xml))
    finally:
        conn.close()


def create_vm(
    lab: Lab,
    name: str,
    protocol: str,
    cmds: list[str],
    host: str = "kvm1",
    disks: tuple[str, ...] = ("64M", "32M"),
    keep_running: bool = False,
) -> str:
    """``vvhost vm create`` of a test guest running ``cmds``; returns its serial log.
    An empty ``protocol``: the host configuration's."""
    log = os.path.join(lab.tmp, f"{name}.serial")
    sizes = [arg for size in disks for arg in ("--disk", size)]
    chosen = ["--protocol", protocol] if protocol else []
    out = lab.vvhost(
        host,
        "vm",
        "create",
        name,
        "--datastore",
        "ds",
        "--memory",
        "256",
        *sizes,
        *chosen,
        "--kernel",
        lab.guest.kernel,
        "--initrd",
        lab.guest.initrd,
        "--serial-log",
        log,
        "--cmdline",
        guest_cmdline(cmds, keep_running=keep_running),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    return log


def boot(lab: Lab, name: str, log: str, host: str = "kvm1") -> str:
    if os.path.exists(log):
        os.unlink(log)
    out = lab.vvhost(host, "vm", "start", name)
    assert out.returncode == 0, out.stderr
    wait_off(lab, host, name)
    with open(log, errors="replace") as fh:
        return fh.read()


def log_text(log: str) -> str:
    return Path(log).read_text(errors="replace") if os.path.exists(log) else ""


def wait_line(log: str, line: str, timeout: float = 90) -> None:
    """Wait until the guest has said ``VVTEST <line>``."""
    deadline = time.monotonic() + timeout
    while f"VVTEST {line}" not in log_text(log):
        assert time.monotonic() < deadline, f"the guest never said {line!r}"
        time.sleep(0.1)


def add_go_channel(lab: Lab, host: str, name: str) -> str:
    """Give domain ``name`` a second serial port on a unix socket (the guest's
    ``wait`` command reads it); returns the socket path."""
    path = os.path.join(tempfile.mkdtemp(prefix="vvgo", dir="/tmp"), "go.sock")
    conn = libvirt.open(lab.hosts[host].uri)
    try:
        root = ET.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        devices = root.find("devices")
        assert devices is not None
        serial = ET.SubElement(devices, "serial", type="unix")
        ET.SubElement(serial, "source", mode="bind", path=path)
        ET.SubElement(serial, "target", port="1")
        conn.defineXML(ET.tostring(root, encoding="unicode"))
    finally:
        conn.close()
    return path


def append_serial(lab: Lab, host: str, name: str) -> None:
    """Both QEMUs of a migration open the serial log: append, so neither truncates it."""
    conn = libvirt.open(lab.hosts[host].uri)
    try:
        root = ET.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        source = root.find("devices/serial/source")
        assert source is not None
        source.set("append", "on")
        conn.defineXML(ET.tostring(root, encoding="unicode"))
    finally:
        conn.close()


def go(path: str, log: str, n: int) -> None:
    """Let a guest that said ``wait n`` go on, and wait until it has."""
    wait_line(log, f"wait {n}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(b"go\n")
        wait_line(log, f"go {n}", timeout=30)


def disk_drivers(lab: Lab, host: str, name: str) -> dict[str, dict[str, str]]:
    """The ``<driver>`` attributes of each disk of running domain ``name`` (by target)."""
    conn = libvirt.open(lab.hosts[host].uri)
    try:
        root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()
    out = {}
    for disk in root.findall("devices/disk"):
        target, driver = disk.find("target"), disk.find("driver")
        if target is not None and driver is not None:
            out[target.get("dev", "")] = dict(driver.attrib)
    return out


def vvhost_json(lab: Lab, host: str, *args: str) -> Any:
    out = lab.vvhost(host, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# How much of each disk a point's pattern covers, from its first MiB.  The guest
# makes and hashes the pattern in a shell under TCG (about 0.25 s per MiB), so a
# boot that checks a point stays short with a few MiB.
VDA_MIB, VDB_MIB = 2, 1


def write_all(p: str) -> list[str]:
    return [f"write:vda:{p}:0:{VDA_MIB}", f"write:vdb:{p}:0:{VDB_MIB}"]


def verify_all(p: str) -> list[str]:
    return [f"verify:vda:{p}:0:{VDA_MIB}", f"verify:vdb:{p}:0:{VDB_MIB}"]


def see(lab: Lab, name: str, log: str, pattern: str, wrong: str) -> None:
    """Boot ``name``: both disks hold ``pattern`` and not ``wrong``."""
    not_wrong = f"verify:vda:{wrong}:0:1"
    set_cmdline(lab, "kvm1", name, guest_cmdline(verify_all(pattern) + [not_wrong]))
    report = parse_serial(boot(lab, name, log))
    assert all(report.results[c] == "ok" for c in verify_all(pattern)), report
    assert report.results[not_wrong] == "FAIL", report


def grow_online(lab: Lab, log: str, channel: str) -> None:
    """vm1 (kvm1, vda 64M) is started, waits, has vda extended to 96M and checks
    that it sees the new size without a restart; it is left running."""
    set_cmdline(
        lab, "kvm1", "vm1", guest_cmdline(["size:vda", "wait", "size:vda"], keep_running=True)
    )
    os.unlink(log)
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    wait_line(log, "wait 1")
    assert parse_serial(log_text(log)).sizes["vda"] == 64 * MiB
    grown = vvhost_json(lab, "kvm1", "vm", "extend-disk", "vm1", "vda", "--size", "96M")
    assert grown["size"] == 96 * MiB
    go(channel, log, 1)
    wait_for_end(log)
    assert parse_serial(log_text(log)).sizes["vda"] == 96 * MiB
