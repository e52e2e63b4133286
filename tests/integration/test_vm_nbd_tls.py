"""A VM whose disks are on a TCP NBD endpoint: libvirt opens them over TLS with the
host's client certificate (qemu.conf nbd_tls_x509_cert_dir), which the host side
fetches by itself, also again after its credentials were rotated; a live migration
moves it from one host's daemon to the other's."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import libvirt

from tests.integration.test_vm_migrate import (  # noqa: F401  (pair: the two-host fixture)
    CMDS,
    DISKS,
    Pair,
    appending_serial,
    check_counting,
    counters,
    p2p,
    pair,
    wait_bindings,
    write_conf,
)
from tests.vmlab import Lab, MiB, boot, create_vm, set_cmdline, vvhost_json, wait_line
from vvhost.daemon import free_port
from vvhost.guest import guest_cmdline, parse_serial, pattern_bytes
from vvhost.host import nbdtls


def nbd_sources(lab: Lab, name: str) -> list[dict[str, str]]:
    conn = libvirt.open(lab.hosts["kvm1"].uri)
    try:
        xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    out = []
    for src in ET.fromstring(xml).iterfind("devices/disk/source"):
        host = src.find("host")
        assert host is not None
        out.append({**src.attrib, "port": host.get("port", "")})
    return out


def test_vm_on_tcp_nbd_uses_tls_with_the_hosts_certificate(lab: Lab) -> None:
    lab.api.pe_delete("nbd0")  # the datastore's only nbd endpoint is then the TCP one
    lab.api.pe_create("tls0", "nbd", portal=f"127.0.0.1:{free_port()}")
    pe_port = lab.api.pe("tls0")["portal"].rpartition(":")[2]
    certs = lab.hosts["kvm1"].nbd_tls_dir
    log = create_vm(lab, "vm1", "nbd", ["write:vda:A:1:4", "write:vdb:B:8:2", "verify:vda:A:1:4"])
    sources = nbd_sources(lab, "vm1")
    assert len(sources) == 2
    assert all(s["protocol"] == "nbd" and s["tls"] == "yes" for s in sources), sources
    assert all(s["port"] != pe_port for s in sources)  # the host's own daemon
    report = parse_serial(boot(lab, "vm1", log))
    assert report.ok and report.results["write:vda:A:1:4"] == "ok", report
    first = nbdtls.current_identity(certs)
    assert first is not None and first.endswith(",CN=kvm1")
    assert oct(os.stat(certs).st_mode & 0o777) == "0o700"
    disks = {d["target"]: d["vvol"] for d in vvhost_json(lab, "kvm1", "vm", "show", "vm1")["disks"]}
    with open(lab.api.vvol(disks["vdb"])["path"], "rb") as fh:
        fh.seek(8 * MiB)
        assert fh.read(2 * MiB) == pattern_bytes("B", 8, 2)
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]

    # rotation: the certificate the host holds is refused from now on; the next start
    # fetches the new one (the hook sees the identity in the handle change)
    lab.api.host_token_rotate("kvm1")
    set_cmdline(lab, "kvm1", "vm1", guest_cmdline(["verify:vda:A:1:4", "verify:vdb:B:8:2"]))
    report = parse_serial(boot(lab, "vm1", log))
    assert report.results["verify:vda:A:1:4"] == "ok", report
    assert report.results["verify:vdb:B:8:2"] == "ok", report
    assert nbdtls.current_identity(certs) not in (None, first)
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]
    assert lab.vvhost("kvm1", "vm", "delete", "vm1").returncode == 0


def test_live_migration_between_hosts_each_on_its_own_tls_daemon(pair: Pair) -> None:  # noqa: F811
    lab = pair.lab
    gateway = lab.api.pe("iscsi0")["portal"].rpartition(":")[0]  # on the lab bridge
    lab.api.pe_delete("nbd0")
    lab.api.pe_create("tls0", "nbd", portal=f"{gateway}:{free_port()}")
    write_conf(lab, "src", "kvm1", "nbd")
    log = create_vm(lab, "mig", "nbd", CMDS, host="src", disks=DISKS, keep_running=True)
    appending_serial(pair.src, "mig")
    dom = pair.conn(pair.src).lookupByName("mig")
    dom.create()
    wait_line(log, "counter 20")
    wait_bindings(lab, {("kvm1", "tls0")}, 2)
    before = {s["port"] for s in tls_sources(dom.XMLDesc(0))}
    at_switch = counters(log)[-1]
    p2p(dom, pair.dst)
    moved = pair.conn(pair.dst).lookupByName("mig")
    assert moved.isActive() and not dom.isActive()
    after = {s["port"] for s in tls_sources(moved.XMLDesc(0))}
    assert len(before) == len(after) == 1 and before != after  # each host its own daemon
    wait_bindings(lab, {("kvm2", "tls0")}, 2)
    check_counting(lab, "mig", log, at_switch)
    for key, name in (("src", "kvm1"), ("dst", "kvm2")):
        found = nbdtls.current_identity(pair.lab.hosts[key].nbd_tls_dir)
        assert found is not None and found.endswith(f",CN={name}")
    moved.destroy()
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]


def tls_sources(xml: str) -> list[dict[str, str]]:
    """The NBD disk sources of a domain XML, each with tls and port; all must use TLS."""
    out = []
    for src in ET.fromstring(xml).iterfind("devices/disk/source"):
        host = src.find("host")
        assert host is not None and src.get("protocol") == "nbd" and src.get("tls") == "yes"
        out.append({"port": host.get("port", ""), "name": src.get("name", "")})
    return out
