"""Lab hosts: private libvirtds in their own mount namespaces, with real TCG domains.

    host "alpha"  unix socket only          hooks_dir/qemu     -> alpha.hooks.log
    host "beta"   + TCP on 127.0.0.1:PORT   hooks_dir/qemu.d/x -> beta.hooks.log
    domain "tiny": 64 MiB, no disk, no kernel, sits in the firmware; serial to a file

Every process a test starts is checked by PID (and start time) after ``stop()``:
libvirtd, and each domain's qemu (from run/qemu/NAME.pid while it runs).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator

import libvirt
import pytest

from tests.runner import wait_for
from vvhost.daemon import free_port
from vvhost.labhost import LibvirtHost

pytestmark = pytest.mark.slow

TINY = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <serial type='file'><source path='/var/log/libvirt/qemu/{name}.serial'/></serial>
  </devices>
</domain>
"""

HOOK = """\
#!/bin/sh
# argv: DOMAIN OP SUBOP EXTRA, the domain XML on stdin
echo "$(hostname) $*" >> {log}
cat > /dev/null
{extra}
"""

FAIL_PREPARE = """\
if [ "$2" = prepare ]; then echo "no vvols for $1" >&2; exit 3; fi
"""


def _capability() -> str | None:
    """Why this machine cannot run lab hosts, or None."""
    if os.geteuid() != 0:
        return "not root: libvirtd in private mount namespaces needs CAP_SYS_ADMIN"
    probe = subprocess.run(
        ["unshare", "--mount", "--uts", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot create mount/UTS namespaces: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_namespaces() -> None:
    reason = _capability()
    if reason:
        pytest.skip(reason)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class Procs:
    """PIDs the test started, each with its start time: "alive" survives no PID reuse."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[int, str]] = {}

    def add(self, pid: int) -> None:
        started = start_time(pid)
        assert started is not None, f"PID {pid} is not running"
        self.seen[pid] = (started, os.readlink(f"/proc/{pid}/exe"))

    def alive(self) -> list[str]:
        return [
            f"{pid} {exe}"
            for pid, (started, exe) in self.seen.items()
            if start_time(pid) == started
        ]


def qemu_pid(host: LibvirtHost, domain: str) -> int:
    with open(host.path("run", "qemu", f"{domain}.pid"), encoding="ascii") as fh:
        return int(fh.read().strip())


def install_hook(path: str, log: str, extra: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(HOOK.format(log=log, extra=extra))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def hook_lines(log: str) -> list[str]:
    try:
        with open(log, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def procs() -> Iterator[Procs]:
    """Fails the test when a process it registered outlives it."""
    tracked = Procs()
    yield tracked
    assert tracked.alive() == [], "processes left behind"


@pytest.fixture
def lab(tmp_path: str, procs: Procs) -> Iterator[Callable[..., LibvirtHost]]:
    """Starts hosts under tmp_path; stops them all at the end (before ``procs`` checks)."""
    hosts: list[LibvirtHost] = []

    def make(name: str, tcp: bool = False) -> LibvirtHost:
        ports = None
        if tcp:
            low = free_port()
            ports = (low, min(low + 15, 65535))
        host = LibvirtHost(
            name,
            os.path.join(tmp_path, name),
            tcp_port=free_port() if tcp else None,
            migration_ports=ports,
        )
        hosts.append(host)
        host.start()
        assert host.pid is not None
        procs.add(host.pid)
        return host

    try:
        yield make
    finally:
        for host in hosts:
            host.stop()
            assert host.pid is None


def test_host_is_private_and_named(lab: Callable[..., LibvirtHost], tmp_path: str) -> None:
    t0 = time.monotonic()
    alpha = lab("alpha")
    started = time.monotonic() - t0
    beta = lab("beta", tcp=True)

    assert os.readlink(f"/proc/{alpha.pid}/exe") == "/usr/sbin/libvirtd"
    assert started < 10, f"start took {started:.2f} s"
    assert alpha.uri == f"qemu+unix:///system?socket={tmp_path}/alpha/run/libvirt-sock"
    assert alpha.tcp_uri is None
    assert beta.tcp_uri == f"qemu+tcp://127.0.0.1:{beta.tcp_port}/system"

    # own hostname in the UTS namespace, seen by libvirt and by commands run there
    assert alpha.run_in_ns(["hostname"], check=True).stdout.strip() == "alpha"
    assert alpha.connect().getHostname() == "alpha"
    assert beta.connect().getHostname() == "beta"
    assert socket.gethostname() not in ("alpha", "beta")

    # hooks_dir is /etc/libvirt/hooks inside that host, and only inside it
    with open(os.path.join(alpha.hooks_dir, "marker"), "w") as fh:
        fh.write("x")
    assert alpha.run_in_ns(["ls", "/etc/libvirt/hooks"], check=True).stdout.split() == ["marker"]
    assert beta.run_in_ns(["ls", "/etc/libvirt/hooks"], check=True).stdout.split() == []
    assert not os.path.exists("/etc/libvirt/hooks/marker")

    # nothing of the real host autostarts; each host has its own UUID (migration needs that)
    assert alpha.connect().listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE) == []
    assert f"<uuid>{alpha.host_uuid}</uuid>" in alpha.connect().getCapabilities()
    assert f"<uuid>{beta.host_uuid}</uuid>" in beta.connect().getCapabilities()
    assert alpha.host_uuid != beta.host_uuid

    # virsh inside the namespace reaches this host's libvirtd at its default URI
    out = alpha.run_in_ns(["virsh", "-c", "qemu:///system", "hostname"], check=True)
    assert out.stdout.strip() == "alpha"

    # the TCP listener answers (no auth)
    assert beta.tcp_uri is not None
    remote = libvirt.open(beta.tcp_uri)
    try:
        assert remote.getHostname() == "beta"
    finally:
        remote.close()

    assert os.path.getsize(alpha.log_path) > 0
    pid = alpha.pid
    alpha.stop()
    assert alpha.pid is None and start_time(pid or 0) is None


def test_tiny_domain_and_hooks_in_order(lab: Callable[..., LibvirtHost], procs: Procs) -> None:
    alpha, beta = lab("alpha"), lab("beta")
    log_a = os.path.join(os.path.dirname(alpha.workdir), "alpha.hooks.log")
    log_b = os.path.join(os.path.dirname(alpha.workdir), "beta.hooks.log")
    conn = alpha.connect()

    # a hook installed after start is not seen before SIGHUP
    install_hook(os.path.join(alpha.hooks_dir, "qemu"), log_a)
    t0 = time.monotonic()
    dom = conn.defineXML(TINY.format(name="tiny"))
    dom.create()
    define_start = time.monotonic() - t0
    assert dom.isActive()
    procs.add(qemu_pid(alpha, "tiny"))
    assert os.readlink(f"/proc/{qemu_pid(alpha, 'tiny')}/exe").endswith("qemu-system-x86_64")
    dom.destroy()
    assert hook_lines(log_a) == []

    alpha.sighup()
    dom.create()
    assert dom.isActive()
    procs.add(qemu_pid(alpha, "tiny"))
    dom.destroy()
    assert not dom.isActive()
    assert hook_lines(log_a) == [
        "alpha tiny prepare begin -",
        "alpha tiny start begin -",
        "alpha tiny started begin -",
        "alpha tiny stopped end -",
        "alpha tiny release end -",
    ]

    # beta has its own hooks directory: alpha's hook never runs for beta's domains
    install_hook(os.path.join(beta.hooks_dir, "qemu.d", "log"), log_b)
    beta.sighup()
    bdom = beta.connect().createXML(TINY.format(name="other"))
    procs.add(qemu_pid(beta, "other"))
    bdom.destroy()
    assert [line.split()[:3] for line in hook_lines(log_b)] == [
        ["beta", "other", op] for op in ("prepare", "start", "started", "stopped", "release")
    ]
    assert len(hook_lines(log_a)) == 5
    assert define_start < 30, f"define+start took {define_start:.2f} s"


def test_failing_prepare_hook_stops_the_start(
    lab: Callable[..., LibvirtHost], tmp_path: str
) -> None:
    alpha = lab("alpha")
    log = os.path.join(tmp_path, "hooks.log")
    install_hook(os.path.join(alpha.hooks_dir, "qemu"), log, FAIL_PREPARE)
    alpha.sighup()
    dom = alpha.connect().defineXML(TINY.format(name="tiny"))
    with pytest.raises(libvirt.libvirtError) as err:
        dom.create()
    assert "no vvols for tiny" in str(err.value)
    assert not dom.isActive()
    assert not os.path.exists(alpha.path("run", "qemu", "tiny.pid"))
    # libvirt still reports the end of the (never started) domain to the hook
    assert [line.split()[2] for line in hook_lines(log)] == ["prepare", "stopped", "release"]


def test_stop_leaves_no_qemu(lab: Callable[..., LibvirtHost], procs: Procs) -> None:
    """stop() with running domains, and after libvirtd itself was SIGKILLed."""
    alpha, beta = lab("alpha"), lab("beta")
    for host in (alpha, beta):
        conn = host.connect()
        conn.createXML(TINY.format(name="t1"))
        conn.defineXML(TINY.format(name="t2")).create()
        for name in ("t1", "t2"):
            procs.add(qemu_pid(host, name))
    qemus = [qemu_pid(beta, "t1"), qemu_pid(beta, "t2")]
    alpha.stop()
    assert beta.pid is not None
    os.kill(beta.pid, signal.SIGKILL)  # a crashed daemon leaves its qemus behind ...
    assert wait_for(lambda: beta.pid is None)
    assert all(start_time(pid) is not None for pid in qemus)
    beta.stop()  # ... and stop() still finds them in the namespace
    assert all(start_time(pid) is None for pid in qemus)
    # persistent definitions survive a restart of the same workdir
    alpha.start()
    procs.add(alpha.pid or 0)
    assert [d.name() for d in alpha.connect().listAllDomains()] == ["t2"]


def test_live_migration_over_tcp(
    lab: Callable[..., LibvirtHost], procs: Procs, tmp_path: str
) -> None:
    alpha, beta = lab("alpha"), lab("beta", tcp=True)
    log_b = os.path.join(tmp_path, "beta.hooks.log")
    install_hook(os.path.join(beta.hooks_dir, "qemu"), log_b)
    beta.sighup()
    src = alpha.connect()
    dom = src.defineXML(TINY.format(name="mover"))
    dom.create()
    source_qemu = qemu_pid(alpha, "mover")
    procs.add(source_qemu)
    time.sleep(0.2)  # let the guest run a little

    assert beta.tcp_uri is not None
    t0 = time.monotonic()
    dom.migrateToURI3(
        beta.tcp_uri,
        {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1"},
        libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER,
    )
    took = time.monotonic() - t0

    moved = beta.connect().lookupByName("mover")
    assert moved.isActive()
    procs.add(qemu_pid(beta, "mover"))
    assert not dom.isActive()  # still defined on alpha, not running there
    assert wait_for(lambda: start_time(source_qemu) is None)
    assert hook_lines(log_b)[0] == "beta mover migrate begin -"
    assert [line.split()[2] for line in hook_lines(log_b)] == [
        "migrate",
        "prepare",
        "start",
        "started",
    ]
    assert took < 60, f"migration took {took:.2f} s"
