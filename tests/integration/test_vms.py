"""VMs on vvols under a real libvirtd (private lab host) with the vvhost hook:
the guest writes and verifies data through iSCSI, NBD and file endpoints, the
hook binds on start and unbinds on stop, and a VM comes back on another host
from its config vvol alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.guest import GuestImage, build_guest, guest_cmdline, parse_serial, pattern_bytes
from vvhost.host.config import HostConfig
from vvhost.host.install import install
from vvhost.labhost import LibvirtHost

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

    def vvhost(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VVHOST_HOST_CONF": self.confs[host]}
        return subprocess.run(
            [sys.executable, "-m", "vvhost", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )

    def add_host(self, name: str, server: str | None = None) -> LibvirtHost:
        h = LibvirtHost(name, os.path.join(self.tmp, name))
        self.hosts[name] = h  # stopped by the fixture even if what follows fails
        h.start()
        conf = os.path.join(self.tmp, f"{name}.conf")
        HostConfig(name=name, server=server or f"unix://{self.server.socket}", libvirt=h.uri).save(
            conf
        )
        install(h.hooks_dir, conf)
        h.sighup()  # returns once libvirtd has reread its hooks
        self.confs[name] = conf
        return h


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    return build_guest()


@pytest.fixture
def lab(tmp_path: str, guest: GuestImage) -> Iterator[Lab]:
    server = ServerProcess(
        os.path.join(tmp_path, "state"), os.path.join(tmp_path, "cp.sock"), private_tgtd=True
    ).start()
    api = server.client()
    lab = Lab(str(tmp_path), server, api, guest, {}, {})
    try:
        for host in ("kvm1", "kvm2"):
            api.host_add(host, f"{HOST_IQN}{host[-1]}")
        api.pe_create("iscsi0", "iscsi", portal=f"127.0.0.1:{free_port()}")
        api.pe_create("nbd0", "nbd")
        api.pe_create("file0", "file", path=os.path.join(tmp_path, "nfs"))
        api.container_create("pool", "4G")
        api.datastore_create("ds", "2G")
        lab.add_host("kvm1")
        yield lab
    finally:
        for h in lab.hosts.values():
            h.stop()
        api.close()
        server.stop()


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
    """``vvhost vm create`` of a test guest running ``cmds``; returns its serial log."""
    log = os.path.join(lab.tmp, f"{name}.serial")
    sizes = [arg for size in disks for arg in ("--disk", size)]
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
        "--protocol",
        protocol,
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


@pytest.mark.parametrize("protocol", ["iscsi", "nbd", "file"])
def test_vm_boots_from_vvols_and_keeps_its_data(lab: Lab, protocol: str) -> None:
    write = ["write:vda:A:1:4", "write:vdb:B:8:2", "verify:vda:A:1:4"]
    log = create_vm(lab, "vm1", protocol, write)
    assert lab.api.bindings(host="kvm1") == []  # defined, not running: nothing bound
    report = parse_serial(boot(lab, "vm1", log))
    assert report.ok and report.results["write:vda:A:1:4"] == "ok", report
    assert lab.api.bindings(host="kvm1") == [], "release left bindings"
    assert lab.api.audit()["ok"], lab.api.audit()
    # the data is in the vvols themselves
    disks = {
        d["target"]: d["vvol"]
        for d in __import__("json").loads(lab.vvhost("kvm1", "vm", "show", "vm1", "--json").stdout)[
            "disks"
        ]
    }
    with open(lab.api.vvol(disks["vdb"])["path"], "rb") as fh:
        fh.seek(8 * MiB)
        assert fh.read(2 * MiB) == pattern_bytes("B", 8, 2)
    set_cmdline(
        lab,
        "kvm1",
        "vm1",
        guest_cmdline(["verify:vda:A:1:4", "verify:vdb:B:8:2", "verify:vdb:A:8:2"]),
    )
    report = parse_serial(boot(lab, "vm1", log))
    assert report.results["verify:vda:A:1:4"] == "ok" and report.results["verify:vdb:B:8:2"] == "ok"
    assert report.results["verify:vdb:A:8:2"] == "FAIL"  # and a wrong pattern is caught
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]
    assert lab.vvhost("kvm1", "vm", "delete", "vm1").returncode == 0
    assert [v["name"] for v in lab.api.vvols()] == []


def test_two_vms_at_once_and_unreachable_control_plane(lab: Lab) -> None:
    logs = [create_vm(lab, n, "iscsi", [f"write:vda:{n}x:0:2", "sleep:4"]) for n in ("v1", "v2")]
    for n in ("v1", "v2"):
        assert lab.vvhost("kvm1", "vm", "start", n).returncode == 0
    running = lab.api.bindings(host="kvm1")
    assert len(running) == 4 and len({b["uri"] for b in running}) == 4
    for n, log in zip(("v1", "v2"), logs, strict=True):
        wait_off(lab, "kvm1", n)
        with open(log, errors="replace") as fh:
            assert parse_serial(fh.read()).ok
    assert lab.api.bindings() == []
    # a host whose control plane is gone: the start fails with the hook's line, nothing bound
    lab.add_host("kvm2", server=f"unix://{lab.tmp}/nobody.sock")
    doc = lab.api.config_get(next(v["id"] for v in lab.api.vvols() if v["name"] == "v1.config"))
    conn = libvirt.open(lab.hosts["kvm2"].uri)
    try:
        conn.defineXML(doc["xml"])
        with pytest.raises(libvirt.libvirtError) as err:
            conn.lookupByName("v1").create()
        assert "cannot reach the control plane" in str(err.value)
    finally:
        conn.close()
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]


def test_register_on_another_host_from_the_config_vvol(lab: Lab) -> None:
    log = create_vm(lab, "mover", "nbd", ["write:vda:M:2:2"])
    assert parse_serial(boot(lab, "mover", log)).ok
    config = next(v["id"] for v in lab.api.vvols() if v["name"] == "mover.config")
    lab.add_host("kvm2")
    out = lab.vvhost("kvm2", "vm", "register", "--config-vvol", config, "--json")
    assert out.returncode == 0, out.stderr
    set_cmdline(lab, "kvm2", "mover", guest_cmdline(["verify:vda:M:2:2"]))
    report = parse_serial(boot(lab, "mover", log, host="kvm2"))
    assert report.results["verify:vda:M:2:2"] == "ok", report
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]


def test_reconnect_after_libvirtd_restart_restores_bindings(lab: Lab) -> None:
    log = create_vm(
        lab, "keep", "iscsi", ["write:vda:K:0:1"], disks=("16M", "16M"), keep_running=True
    )
    assert lab.vvhost("kvm1", "vm", "start", "keep").returncode == 0
    wait_for_end(log)
    before = {b["vvol"]: b["uri"] for b in lab.api.bindings(host="kvm1")}
    assert len(before) == 2
    lost = sorted(before)[0]
    lab.api.unbind([lost], "kvm1")  # a binding lost while libvirtd was away
    host = lab.hosts["kvm1"]
    host.restart_daemon()  # the VM keeps running; the new libvirtd runs the reconnect hook
    conn = libvirt.open(host.uri)
    try:
        assert conn.lookupByName("keep").isActive()
    finally:
        conn.close()
    deadline = time.monotonic() + 30  # libvirtd reconnects to its domains in the background
    while (after := {b["vvol"]: b["uri"] for b in lab.api.bindings(host="kvm1")}) != before:
        assert time.monotonic() < deadline, f"not restored: {after} != {before}"
        time.sleep(0.2)  # restored, at the same LUN the running QEMU uses
    assert lab.api.audit()["ok"]
    assert lab.vvhost("kvm1", "vm", "stop", "keep", "--force").returncode == 0
    assert lab.api.bindings() == []


def test_disk_from_image_refresh_and_delete_guards(lab: Lab) -> None:
    image = os.path.join(lab.tmp, "seed.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "20M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5e 3M 2M", image],
        check=True,
        capture_output=True,
    )
    out = lab.vvhost(
        "kvm1",
        "vm",
        "create",
        "imported",
        "--datastore",
        "ds",
        "--memory",
        "128",
        "--disk-from",
        image,
        "--protocol",
        "iscsi",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    vda = json.loads(out.stdout)["disks"][0]["vvol"]
    path = lab.api.vvol(vda)["path"]
    assert lab.api.vvol(vda)["size"] == 20 * MiB
    same = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", image, path],
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0, same.stdout  # the vvol holds exactly the image's data
    assert lab.api.bindings() == []  # the import binding is gone
    # the definition points somewhere else (as after an endpoint change): start is refused
    conn = libvirt.open(lab.hosts["kvm1"].uri)
    try:
        xml = conn.lookupByName("imported").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        conn.defineXML(re.sub(r"name='(iqn[^']*)/1'", r"name='\1/99'", xml.replace('"', "'")))
        with pytest.raises(libvirt.libvirtError) as err:
            conn.lookupByName("imported").create()
        assert "run `vvhost vm refresh imported`" in str(err.value)
        assert lab.api.bindings() == []  # the failed start left nothing bound
        assert lab.vvhost("kvm1", "vm", "refresh", "imported").returncode == 0
        dom = conn.lookupByName("imported")
        dom.create()
        assert dom.isActive() and len(lab.api.bindings(host="kvm1")) == 1
        dom.destroy()
    finally:
        conn.close()
    assert lab.api.bindings() == []
    snap = lab.api.vvol_snapshot(vda)
    refused = lab.vvhost("kvm1", "vm", "delete", "imported")
    assert refused.returncode == 4 and "snapshots" in refused.stderr
    lab.api.vvol_delete(snap["id"])
    assert lab.vvhost("kvm1", "vm", "delete", "imported").returncode == 0
    assert lab.api.vvols() == [] and lab.api.audit()["ok"]


def test_live_migration_rebinds_on_the_destination(lab: Lab) -> None:
    """The migrate hook binds the vvols for the destination host and rewrites the XML;
    the source's release drops the source's bindings (issue 8 builds on this)."""
    port = free_port()
    dest = LibvirtHost(
        "kvm2",
        os.path.join(lab.tmp, "kvm2m"),
        tcp_port=port,
        migration_ports=(mig := free_port(), mig + 5),
    )
    lab.hosts["kvm2m"] = dest  # stopped by the fixture even if what follows fails
    dest.start()
    conf = os.path.join(lab.tmp, "kvm2m.conf")
    HostConfig(name="kvm2", server=f"unix://{lab.server.socket}", libvirt=dest.uri).save(conf)
    install(dest.hooks_dir, conf)
    dest.sighup()
    log = create_vm(lab, "mig", "iscsi", ["write:vda:G:0:1"], disks=("16M",), keep_running=True)
    assert lab.vvhost("kvm1", "vm", "start", "mig").returncode == 0
    wait_for_end(log)
    src = libvirt.open(lab.hosts["kvm1"].uri)
    try:
        dom = src.lookupByName("mig")
        params = {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1"}
        dom.migrateToURI3(
            dest.tcp_uri, params, libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        )
    finally:
        src.close()
    conn = libvirt.open(dest.uri)
    try:
        moved = conn.lookupByName("mig")
        assert moved.isActive()
        assert "kvm2" in moved.XMLDesc(0)  # the disk now points at kvm2's target
    finally:
        conn.close()
    deadline = time.monotonic() + 20
    while [b["host"] for b in lab.api.bindings()] != ["kvm2"]:
        assert time.monotonic() < deadline, lab.api.bindings()
        time.sleep(0.2)
    assert lab.api.audit()["ok"]
