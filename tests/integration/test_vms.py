"""VMs on vvols under a real libvirtd (private lab host) with the vvhost hook:
the guest writes and verifies data through iSCSI, NBD and file endpoints, the
hook binds on start and unbinds on stop, and a VM comes back on another host
from its config vvol alone."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
import xml.etree.ElementTree as ET

import libvirt
import pytest

from tests.vmlab import Lab, MiB, boot, create_vm, set_cmdline, wait_for_end, wait_off
from vvhost.guest import guest_cmdline, parse_serial, pattern_bytes
from vvhost.host import iscsisecret


def chap_disks_use_the_hosts_account(lab: Lab, host: str, vm: str) -> None:
    """Every iSCSI disk of ``vm`` names ``host``'s CHAP user and a libvirt secret
    holding its secret; the secret itself is not in the domain's XML."""
    conn = libvirt.open(lab.hosts[host].uri)
    try:
        xml = conn.lookupByName(vm).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        sources = ET.fromstring(xml).findall("devices/disk/source[@protocol='iscsi']")
        assert sources, xml
        for src in sources:
            auth = src.find("auth")
            assert auth is not None and auth.get("username", "").startswith(f"{host}."), xml
            ref = auth.find("secret")
            assert ref is not None and ref.get("type") == "iscsi", xml
            secret = conn.secretLookupByUUIDString(ref.get("uuid"))
            assert secret.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_ISCSI
            with pytest.raises(libvirt.libvirtError, match="private"):
                secret.value()  # libvirt never hands it out again
            # the host's copy for QEMU objects: readable by root only, not in the XML
            directory = iscsisecret.secret_dir(os.path.join(lab.tmp, host, "ceph"))
            path = os.path.join(directory, f"{auth.get('username')}.secret")
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            with open(path, encoding="ascii") as fh:
                assert len(value := fh.read()) >= 24 and value not in xml
    finally:
        conn.close()


@pytest.mark.parametrize("protocol", ["iscsi", "nbd", "file"])
def test_vm_boots_from_vvols_and_keeps_its_data(lab: Lab, protocol: str) -> None:
    write = ["write:vda:A:1:4", "write:vdb:B:8:2", "verify:vda:A:1:4"]
    log = create_vm(lab, "vm1", protocol, write)
    assert lab.api.bindings(host="kvm1") == []  # defined, not running: nothing bound
    report = parse_serial(boot(lab, "vm1", log))
    assert report.ok and report.results["write:vda:A:1:4"] == "ok", report
    assert lab.api.bindings(host="kvm1") == [], "release left bindings"
    assert lab.api.audit()["ok"], lab.api.audit()
    if protocol == "iscsi":  # the disks log in with kvm1's CHAP account
        chap_disks_use_the_hosts_account(lab, "kvm1", "vm1")
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
    assert refused.returncode == 4 and "still used by" in refused.stderr
    lab.api.vvol_delete(snap["id"])
    assert lab.vvhost("kvm1", "vm", "delete", "imported").returncode == 0
    assert lab.api.vvols() == [] and lab.api.audit()["ok"]
