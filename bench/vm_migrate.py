"""VM live migration: total time and downtime of a VM on vvols moved with what
``vvhost vm migrate`` runs (the destination's hook binds its vvols there, the
source's release unbinds them here, the destination's persistent definition and
the config vvol's document are updated afterwards), against a plain libvirt
migration of the same definition on the same kind of disks, with no vvhost work.

One control plane (private tgtd, endpoint ``iscsi0``) and two lab hosts, kvm1 and
kvm2, each a private libvirtd listening on TCP with the hook installed.  ``bench``
is made by ``vvhost vm create`` (64M + 32M over iSCSI).  ``plain`` is its inactive
XML with another name, no ``<metadata>`` (the hook passes it through without
calling the control plane), no UUID, and disks on two vvols of the same sizes
bound once, before the runs, on the endpoint's shared target (its ACL admits both
hosts' initiators), so the same sources work on either host.  Both guests run
``counter:vda:8`` (a write and fsync at a time, forever): each migration is of a
VM writing to its disk, and the counter in the vvol must advance after each.

Each round migrates both VMs kvm1 -> kvm2 and back, in alternating order, with
LIVE | PEER2PEER | PERSIST_DEST | UNDEFINE_SOURCE and the memory stream on
tcp://127.0.0.1.  Total: wall time of the call (vvhost: ``migrate()`` as the
command calls it, without the interpreter's start; plain: ``migrateToURI3``).
Downtime: libvirt's completed-job statistics on the destination (``downtime``, ms:
from the source's CPUs stopping to the destination's resuming).  One untimed
round first; medians over every timed migration.
"""

from __future__ import annotations

import os
import time
from typing import Any

import libvirt

from vvhost.client import Client
from vvhost.daemon import free_port
from vvhost.guest import build_guest, guest_cmdline, read_counter
from vvhost.host import domainxml as dx
from vvhost.host.config import HostConfig
from vvhost.host.install import install
from vvhost.host.migrate import LIVE_FLAGS, migrate
from vvhost.host.vms import VmManager, VmSpec
from vvhost.labhost import LibvirtHost

from .common import Result, check, median, private_dir, server

REPS = 5
HOSTS = ("kvm1", "kvm2")
IQN = "iqn.2026-11.bench.vvhost:"
SIZES = {"vda": 64, "vdb": 32}  # MiB
COUNTER_OFF = 8  # MiB into vda
MIGRATE_URI = "tcp://127.0.0.1"
GRACE = 20.0


class Bench:
    """The two hosts, the two VMs, and how each side migrates."""

    def __init__(self, work: str, socket: str, api: Client) -> None:
        self.work, self.socket, self.api = work, socket, api
        self.hosts: dict[str, LibvirtHost] = {}
        self.confs: dict[str, HostConfig] = {}
        self.conns: dict[str, Any] = {}
        self.paths: dict[str, str] = {}  # VM -> its vda vvol's file

    def add_host(self, name: str) -> None:
        low = free_port()
        host = LibvirtHost(
            name,
            os.path.join(self.work, name),
            tcp_port=free_port(),
            migration_ports=(low, low + 5),
        )
        self.hosts[name] = host
        host.start()
        conf = HostConfig(name=name, server=f"unix://{self.socket}", libvirt=host.uri)
        path = os.path.join(self.work, f"{name}.conf")
        conf.save(path)
        install(host.hooks_dir, path)
        host.sighup()
        self.confs[name] = conf
        self.conns[name] = host.connect()

    def stop(self) -> None:
        for host in self.hosts.values():
            host.stop()

    def create(self) -> None:
        """``bench`` through vvhost, ``plain`` as its twin; both started on kvm1."""
        guest = build_guest()
        conf = self.confs["kvm1"]
        vms = VmManager(conf, self.api)
        spec = VmSpec(
            name="bench",
            datastore="ds",
            memory=256,
            disks=tuple(f"{mib}M" for mib in SIZES.values()),
            kernel=guest.kernel,
            initrd=guest.initrd,
            cmdline=guest_cmdline([f"counter:vda:{COUNTER_OFF}"], keep_running=True),
            protocol="iscsi",
            serial_log=os.path.join(self.work, "bench.serial"),
        )
        shown = vms.create(spec)
        vms.close()
        self.paths["bench"] = self.api.vvol(shown["disks"][0]["vvol"])["path"]
        conn = self.conns["kvm1"]
        xml = conn.lookupByName("bench").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        conn.defineXML(self.plain_xml(xml))
        for name in ("bench", "plain"):
            conn.lookupByName(name).create()

    def plain_xml(self, xml: str) -> str:
        root = dx.parse(xml)
        name, source = root.find("name"), root.find("devices/serial/source")
        check(name is not None and source is not None, "bench's XML has no name or serial log")
        assert name is not None and source is not None
        name.text = "plain"
        for tag in ("uuid", "metadata"):
            for el in root.findall(tag):
                root.remove(el)
        for target, mib in SIZES.items():
            vvol = self.api.vvol_create(None, f"{mib}M", name=f"plain.{target}", datastore="ds")
            handle = self.api.bind_one(vvol["id"], "kvm1", pe="iscsi0", shared=True)
            dx.set_source(root, target, handle)
            if target == "vda":
                self.paths["plain"] = self.api.vvol(vvol["id"])["path"]
        source.set("path", os.path.join(self.work, "plain.serial"))
        return dx.tostring(root)

    # -- one migration each -----------------------------------------------------------------
    def vvhost(self, src: str, dst: str) -> tuple[float, float]:
        vms = VmManager(self.confs[src], self.api)
        try:
            start = time.perf_counter()
            result = migrate(vms, "bench", str(self.hosts[dst].tcp_uri), migrate_uri=MIGRATE_URI)
            total = time.perf_counter() - start
        finally:
            vms.close()
        check(result["to"] == dst, f"bench went to {result['to']}, not {dst}")
        self.moved("bench", src, dst)
        return total, float(result["downtime_ms"])

    def plain(self, src: str, dst: str) -> tuple[float, float]:
        dom = self.conns[src].lookupByName("plain")
        start = time.perf_counter()
        dom.migrateToURI3(
            self.hosts[dst].tcp_uri, {libvirt.VIR_MIGRATE_PARAM_URI: MIGRATE_URI}, LIVE_FLAGS
        )
        total = time.perf_counter() - start
        stats = (
            self.conns[dst].lookupByName("plain").jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        )
        self.moved("plain", src, dst)
        return total, float(stats["downtime"])

    def moved(self, name: str, src: str, dst: str) -> None:
        """Runs on ``dst`` only, keeps writing to its vvol; bench's bindings follow it."""
        check(self.conns[dst].lookupByName(name).isActive(), f"{name} is not running on {dst}")
        with_src = [d.name() for d in self.conns[src].listAllDomains()]
        check(name not in with_src, f"{name} is still defined on {src}")
        before = read_counter(self.paths[name], COUNTER_OFF) or 0
        deadline = time.monotonic() + GRACE
        while (read_counter(self.paths[name], COUNTER_OFF) or 0) <= before:
            check(time.monotonic() < deadline, f"{name} stopped writing after the move")
            time.sleep(0.05)
        if name == "bench":
            while {b["host"] for b in self.api.bindings() if not b["shared"]} != {dst}:
                check(time.monotonic() < deadline, f"bench's bindings: {self.api.bindings()}")
                time.sleep(0.05)


def run(reps: int | None = None) -> list[Result]:
    n = reps or REPS
    totals: dict[str, list[float]] = {"vvhost": [], "plain": []}
    downs: dict[str, list[float]] = {"vvhost": [], "plain": []}
    with private_dir("vm-migrate") as work:
        with server(os.path.join(work, "state"), private_tgtd=True) as (proc, api):
            for name in HOSTS:
                api.host_add(name, IQN + name)
            api.pe_create("iscsi0", "iscsi", portal=f"127.0.0.1:{free_port()}")
            api.container_create("pool", "4G")
            api.datastore_create("ds", "2G")
            lab = Bench(work, str(proc.socket), api)
            try:
                for name in HOSTS:
                    lab.add_host(name)
                lab.create()
                for rnd in range(-1, n):  # round -1: warm-up, untimed
                    sides = ["vvhost", "plain"] if rnd % 2 == 0 else ["plain", "vvhost"]
                    for src, dst in (HOSTS, HOSTS[::-1]):
                        for side in sides:
                            total, down = getattr(lab, side)(src, dst)
                            if rnd >= 0:
                                totals[side].append(total)
                                downs[side].append(down)
                for name in ("bench", "plain"):
                    lab.conns["kvm1"].lookupByName(name).destroy()
                check(
                    all(b["shared"] for b in api.bindings()),
                    f"bench left bindings: {api.bindings()}",
                )
                check(api.audit()["ok"], f"audit after the benchmark: {api.audit()}")
            finally:
                lab.stop()
    samples = {**totals, "downtime_vvhost": downs["vvhost"], "downtime_plain": downs["plain"]}
    note = (
        f"vm-migrate: medians of {len(totals['vvhost'])} live migrations per VM (half each "
        "way) between two lab hosts over iSCSI after one warm-up round trip, guests "
        "writing to vda throughout"
    )
    rows = [
        Result(
            "vm live migration total time: vvhost vs plain libvirt",
            "ratio <= 1.2",
            1.2,
            median(totals["vvhost"]),
            median(totals["plain"]),
            samples=samples,
        ).finish(),
        Result(
            "vm live migration downtime: vvhost vs plain libvirt",
            "ratio <= 1.2",
            1.2,
            median(downs["vvhost"]) / 1e3,
            median(downs["plain"]) / 1e3,
        ).finish(),
    ]
    for row in rows:
        row.notes.append(note)
    rows[1].notes.append(
        f"downtime medians {median(downs['vvhost']):.0f} ms (vvhost) vs "
        f"{median(downs['plain']):.0f} ms (plain); the hook's work is before the memory "
        "copy (destination) and after the switch (source), outside the downtime"
    )
    return rows
