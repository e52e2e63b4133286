"""Live migration between two lab hosts that share the control plane: the guest keeps
writing a counter to its disk while it moves, the source reaches its vvols over iSCSI
and the destination over NBD, a failed or cancelled migration leaves the VM where it
was with nothing bound for the destination, and ``vvhost vm migrate`` wraps it all.
The plain round trip (hooks only, over TLS with the hosts' tokens) runs in the lab
topology of many hosts: tests/integration/test_netlab_topology.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import libvirt
import pytest

from tests.vmlab import Lab, create_vm, log_text, set_cmdline, wait_line, wait_off
from vvhost.daemon import free_port
from vvhost.guest import guest_cmdline, parse_serial, pattern_bytes, read_counter
from vvhost.host import domainxml as dx
from vvhost.host.config import HostConfig
from vvhost.host.install import install
from vvhost.labhost import LibvirtHost
from vvhost.labnet import LabNet

MiB = 1 << 20
COUNTER_OFF = 8  # MiB into vda
DATA = "write:vdb:Pre:0:4"  # written before the counter starts, checked after each move
CMDS = [DATA, f"counter:vda:{COUNTER_OFF}"]
DISKS = ("16M", "8M")


@dataclass
class Pair:
    lab: Lab
    src: LibvirtHost  # vvhost host kvm1, iSCSI
    dst: LibvirtHost  # vvhost host kvm2, NBD

    def conn(self, host: LibvirtHost) -> Any:
        return host.connect()

    def cli(self, key: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.vvhost(key, *args)


def migration_host(lab: Lab, key: str, name: str, protocol: str, net: LabNet) -> LibvirtHost:
    """A lab host that also takes peer-to-peer migrations (TCP listener, own ports)."""
    mig = free_port()
    host = LibvirtHost(
        name,
        os.path.join(lab.tmp, key),
        tcp_port=free_port(),
        migration_ports=(mig, mig + 5),
        net=net,
    )
    lab.hosts[key] = host  # stopped by the lab even if what follows fails
    host.start()
    write_conf(lab, key, name, protocol)
    install(host.hooks_dir, lab.confs[key])
    host.sighup()
    return host


def write_conf(lab: Lab, key: str, name: str, protocol: str, **extra: Any) -> None:
    conf = os.path.join(lab.tmp, f"{key}.conf")
    server = extra.pop("server", f"unix://{lab.server.socket}")
    host = lab.hosts[key]
    extra.setdefault("nbd_tls_dir", host.nbd_tls_dir)
    HostConfig(name=name, server=server, protocol=protocol, libvirt=host.uri, **extra).save(conf)
    lab.confs[key] = conf


@pytest.fixture
def pair(lab: Lab) -> Iterator[Pair]:
    """Two hosts, each in its own network namespace on one lab bridge; the iSCSI
    endpoint listens on the bridge, where both reach it."""
    net = LabNet().start()
    try:
        lab.api.pe_delete("iscsi0")
        lab.api.pe_create("iscsi0", "iscsi", portal=f"{net.gateway}:{free_port()}")
        src = migration_host(lab, "src", "kvm1", "iscsi", net)
        dst = migration_host(lab, "dst", "kvm2", "nbd", net)
        yield Pair(lab, src, dst)
    finally:
        for key in ("src", "dst"):
            if key in lab.hosts:
                lab.hosts[key].stop()
        net.stop()


def appending_serial(host: LibvirtHost, name: str) -> None:
    """Both QEMUs of a migration open the serial log: append, so neither truncates it."""
    conn = host.connect()
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    source = root.find("devices/serial/source")
    assert source is not None
    source.set("append", "on")
    conn.defineXML(ET.tostring(root, encoding="unicode"))


def counter_vm(pair: Pair, name: str) -> str:
    """A running guest on src that wrote DATA and now counts on vda; its serial log."""
    log = create_vm(pair.lab, name, "iscsi", CMDS, host="src", disks=DISKS, keep_running=True)
    appending_serial(pair.src, name)
    pair.conn(pair.src).lookupByName(name).create()
    wait_line(log, "counter 20")
    return log


def counters(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"VVTEST counter (\d+)", log_text(log))]


def vvol_paths(lab: Lab, name: str) -> dict[str, str]:
    return {
        v["name"].split(".")[-1]: lab.api.vvol(v["id"])["path"]
        for v in lab.api.vvols()
        if v["name"].startswith(f"{name}.")
    }


def check_counting(lab: Lab, name: str, log: str, since: int) -> None:
    """The guest goes on counting past ``since`` (serial lines 10 apart, never back),
    the vvol holds its newer values, and DATA is intact in the vvol."""
    deadline = time.monotonic() + 60
    while not counters(log) or counters(log)[-1] < since + 50:
        assert time.monotonic() < deadline, f"the counter stopped at {counters(log)[-1:]}"
        time.sleep(0.2)
    seen = counters(log)
    assert seen == list(range(10, seen[-1] + 1, 10)), f"a gap or a step back: {seen}"
    paths = vvol_paths(lab, name)
    on_disk = read_counter(paths["vda"], COUNTER_OFF)
    assert on_disk is not None and on_disk >= since + 40, (on_disk, since)
    time.sleep(0.5)
    later = read_counter(paths["vda"], COUNTER_OFF)
    assert later is not None and later > on_disk, "the vvol stopped changing"
    with open(paths["vdb"], "rb") as fh:
        assert fh.read(4 * MiB) == pattern_bytes("Pre", 0, 4)


def bound(lab: Lab) -> list[tuple[str, str, str]]:
    return sorted((b["host"], b["pe"], b["vvol"]) for b in lab.api.bindings())


def hosts_of_bindings(lab: Lab) -> set[tuple[str, str]]:
    return {(b["host"], b["pe"]) for b in lab.api.bindings()}


def wait_bindings(lab: Lab, want: set[tuple[str, str]], count: int) -> None:
    deadline = time.monotonic() + 30
    while hosts_of_bindings(lab) != want or len(lab.api.bindings()) != count:
        assert time.monotonic() < deadline, lab.api.bindings()
        time.sleep(0.2)


def p2p(dom: Any, dst: LibvirtHost, flags: int = 0, **params: Any) -> None:
    """``virsh migrate --live --p2p DOM qemu+tcp://DEST/system tcp://DEST``."""
    args = {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{dst.address}", **params}
    dom.migrateToURI3(
        dst.tcp_uri, args, libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | flags
    )


def protocols(xml: str) -> set[str]:
    root = dx.parse(xml)
    return {(dx.disk_source(root, t) or {}).get("protocol", "") for t in ("vda", "vdb")}


def doc_of(lab: Lab, name: str) -> dict[str, Any]:
    config = next(v["id"] for v in lab.api.vvols() if v["name"] == f"{name}.config")
    return lab.api.config_get(config)


def test_vm_migrate_command_live_and_offline(pair: Pair) -> None:
    lab = pair.lab
    log = counter_vm(pair, "cmd")
    assert pair.dst.tcp_uri is not None and pair.src.tcp_uri is not None
    at_switch = counters(log)[-1]
    out = pair.cli("src", "vm", "migrate", "cmd", "--to", pair.dst.tcp_uri,
                   "--migrate-uri", f"tcp://{pair.dst.address}", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["mode"], result["from"], result["to"], result["pe"]) == (
        "live",
        "kvm1",
        "kvm2",  # the hostname kvm2's libvirtd reports
        "nbd0",
    )
    assert result["total_s"] > 0 and result["downtime_ms"] is not None
    assert result["elapsed_ms"] is not None and result["downtime_ms"] < result["elapsed_ms"]
    wait_bindings(lab, {("kvm2", "nbd0")}, 2)
    check_counting(lab, "cmd", log, at_switch)
    assert doc_of(lab, "cmd")["host"] == "kvm2" and doc_of(lab, "cmd")["pe"] == "nbd0"
    with pytest.raises(libvirt.libvirtError):
        pair.conn(pair.src).lookupByName("cmd")  # UNDEFINE_SOURCE
    # the destination's persistent definition opens kvm2's NBD exports: it boots there
    dst = pair.conn(pair.dst)
    dst.lookupByName("cmd").destroy()
    assert lab.api.bindings() == []
    verify = [DATA.replace("write", "verify"), "size:vda"]
    set_cmdline(lab, "dst", "cmd", guest_cmdline(verify))
    assert pair.cli("dst", "vm", "start", "cmd").returncode == 0
    wait_off(lab, "dst", "cmd")
    report = parse_serial(log_text(log).split("VVTEST BEGIN")[-1])
    assert report.results[verify[0]] == "ok", report
    assert lab.api.bindings() == []
    # offline back to kvm1: defined there, gone here, nothing bound on the way
    assert pair.src.tcp_uri is not None
    out = pair.cli("dst", "vm", "migrate", "cmd", "--to", pair.src.tcp_uri, "--offline", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["to"] == "kvm1"
    with pytest.raises(libvirt.libvirtError):
        dst.lookupByName("cmd")
    assert doc_of(lab, "cmd")["host"] == "kvm1" and lab.api.bindings() == []
    assert pair.cli("src", "vm", "start", "cmd").returncode == 0
    wait_off(lab, "src", "cmd")
    report = parse_serial(log_text(log).split("VVTEST BEGIN")[-1])
    assert report.results[verify[0]] == "ok", report
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]


def test_vm_migrate_bad_input_leaves_everything_as_it_was(pair: Pair) -> None:
    lab = pair.lab
    create_vm(lab, "idle", "iscsi", ["write:vda:I:0:1"], host="src", disks=("8M",))
    log = counter_vm(pair, "busy")
    before = bound(lab)
    assert pair.dst.tcp_uri is not None
    dead = f"qemu+tcp://127.0.0.1:{free_port()}/system"
    cases = [
        (["nosuch", "--to", pair.dst.tcp_uri], "VM 'nosuch' not found"),
        (["busy", "--to", dead], "cannot connect to libvirt"),
        (["idle", "--to", pair.dst.tcp_uri], "not running; use --offline"),
        (["busy", "--to", pair.dst.tcp_uri, "--offline"], "leave out --offline"),
        (["busy", "--to", pair.dst.tcp_uri, "--dest-host", "kvm9"], "kvm9 is not a vvhost host"),
        (["busy", "--to", pair.dst.tcp_uri, "--dest-host", "kvm1"], "the destination is this"),
    ]
    for args, words in cases:
        out = pair.cli("src", "vm", "migrate", *args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode != 0 and len(lines) == 1 and words in lines[0], (args, out.stderr)
        assert bound(lab) == before
    assert pair.conn(pair.dst).listAllDomains() == []
    assert pair.conn(pair.src).lookupByName("busy").isActive()
    check_counting(lab, "busy", log, counters(log)[-1])
    assert lab.api.audit()["ok"]


def incoming_pid(dst: LibvirtHost, name: str, timeout: float = 30) -> int:
    """The PID of the destination's incoming QEMU (from its run dir)."""
    path = dst.path("run", "qemu", f"{name}.pid")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as fh:
                pid = int(fh.read().strip())
            with open(f"/proc/{pid}/comm") as fh:
                if "qemu" in fh.read():
                    return pid
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, "no incoming QEMU on the destination"
        time.sleep(0.05)


def wait_streaming(dom: Any, timeout: float = 30) -> None:
    """Until the source's migration job has sent memory."""
    deadline = time.monotonic() + timeout
    while True:
        stats = dom.jobStats()
        if stats.get("type") == libvirt.VIR_DOMAIN_JOB_UNBOUNDED and stats.get("data_processed"):
            return
        assert time.monotonic() < deadline, f"the migration never got going: {stats}"
        time.sleep(0.05)


class Background:
    """A slow migration (1 MiB/s) on its own connection; ``join`` gives its error."""

    def __init__(self, src: LibvirtHost, dst: LibvirtHost, name: str) -> None:
        self.error: libvirt.libvirtError | None = None
        self.conn = libvirt.open(src.uri)
        dom = self.conn.lookupByName(name)
        self.thread = threading.Thread(target=self._run, args=(dom, dst), daemon=True)
        self.thread.start()

    def _run(self, dom: Any, dst: LibvirtHost) -> None:
        try:
            p2p(dom, dst, **{libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 1})
        except libvirt.libvirtError as exc:
            self.error = exc

    def join(self) -> str:
        self.thread.join(120)
        assert not self.thread.is_alive()
        self.conn.close()
        assert self.error is not None, "the migration succeeded"
        return str(self.error)


def still_home(pair: Pair, name: str, log: str, before: list[tuple[str, str, str]]) -> None:
    """The VM runs on the source with its bindings, nothing is bound for or left on
    the destination, and the array, endpoints and catalog agree."""
    lab = pair.lab
    assert pair.conn(pair.src).lookupByName(name).isActive()
    deadline = time.monotonic() + 30
    while bound(lab) != before or [d for d in pair.conn(pair.dst).listAllDomains() if d.isActive()]:
        assert time.monotonic() < deadline, (bound(lab), before)
        time.sleep(0.2)
    audit = lab.api.audit()
    assert audit["ok"], audit
    check_counting(lab, name, log, counters(log)[-1])


def test_failed_and_cancelled_migrations_leave_the_vm_at_home(pair: Pair) -> None:
    lab = pair.lab
    log = counter_vm(pair, "stay")
    before = bound(lab)
    dom = pair.conn(pair.src).lookupByName("stay")
    # 1. the destination's QEMU dies while memory streams in
    job = Background(pair.src, pair.dst, "stay")
    pid = incoming_pid(pair.dst, "stay")
    wait_streaming(dom)
    assert {h for h, _pe in hosts_of_bindings(lab)} == {"kvm1", "kvm2"}  # bound there too
    os.kill(pid, signal.SIGKILL)
    job.join()
    still_home(pair, "stay", log, before)
    # 2. cancelled (virDomainAbortJob) half way
    job = Background(pair.src, pair.dst, "stay")
    wait_streaming(dom)
    dom.abortJob()
    assert "cancel" in job.join().lower()
    still_home(pair, "stay", log, before)
    # 3. the destination's hook fails: its control plane is unreachable ...
    write_conf(lab, "dst", "kvm2", "nbd", server=f"unix://{lab.tmp}/nobody.sock")
    with pytest.raises(libvirt.libvirtError) as err:
        p2p(dom, pair.dst)
    assert "cannot reach the control plane" in str(err.value)
    still_home(pair, "stay", log, before)
    # ... or names an endpoint it cannot use
    write_conf(lab, "dst", "kvm2", "nbd", pe="nope")
    with pytest.raises(libvirt.libvirtError) as err:
        p2p(dom, pair.dst)
    assert "nope" in str(err.value)
    still_home(pair, "stay", log, before)
    # the command says so in one line and leaves nothing either
    assert pair.dst.tcp_uri is not None
    out = pair.cli("src", "vm", "migrate", "stay", "--to", pair.dst.tcp_uri,
                   "--migrate-uri", f"tcp://{pair.dst.address}")  # fmt: skip
    assert out.returncode == 4 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "the destination's hook failed: vvhost: stay: protocol endpoint 'nope'" in out.stderr
    assert "the VM still runs here" in out.stderr
    still_home(pair, "stay", log, before)
    # with its configuration right again, the same VM migrates
    write_conf(lab, "dst", "kvm2", "nbd")
    at_switch = counters(log)[-1]
    p2p(dom, pair.dst)
    wait_bindings(lab, {("kvm2", "nbd0")}, 2)
    check_counting(lab, "stay", log, at_switch)
    assert lab.api.audit()["ok"]
