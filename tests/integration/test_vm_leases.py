"""One VM operation at a time, with the real lab (COW mode on XFS, a running guest).

Two ``vvhost vm snapshot`` on the same VM: the first is frozen (SIGSTOP) holding
the VM's lease with its snapshot half-taken; the second is refused with one line,
"busy: vm-snapshot since TIME on kvm1", exit 4, and changes nothing (a plain read
does not "recover" the first one's work either); a third with ``--wait`` waits,
then runs once the first has finished.  A holder killed (SIGKILL) with the guest
paused mid-snapshot: the next command takes its lease over at once (the owner
process is gone) or, when another host held it, after it expired, and finishes
the cut-short snapshot as before.  Data is checked by booting reverted points."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import libvirt

from tests.vmlab import (
    Lab,
    add_go_channel,
    create_vm,
    go,
    see,
    vvhost_json,
    wait_for_end,
    wait_line,
    write_all,
)
from vvhost.faults import HOST_FAULT_ENV, HOST_FAULT_SIGNAL_ENV
from vvhost.host.vmop import TTL_ENV

BUSY = re.compile(r"vvhost: error: busy: (\S+) since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ on (\S+)")


def vvol_names(lab: Lab) -> set[str]:
    return {v["name"] for v in lab.api.vvols()}


def config_of(lab: Lab, vm: str) -> str:
    return next(v["id"] for v in lab.api.vvols() if v["name"] == f"{vm}.config")


def popen(lab: Lab, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vvhost", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**lab_env(lab), **(env or {})},
    )


def lab_env(lab: Lab) -> dict[str, str]:
    return {**os.environ, "VVHOST_HOST_CONF": lab.confs["kvm1"]}


def wait_stopped(pid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
        if state == "T":
            return
        assert state != "Z" and time.monotonic() < deadline, f"process {pid} never stopped"
        time.sleep(0.1)


def running_vm(lab: Lab) -> tuple[str, str]:
    log = create_vm(
        lab, "vm1", "iscsi", write_all("A") + ["wait"] + write_all("B"), keep_running=True
    )
    channel = add_go_channel(lab, "kvm1", "vm1")
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    wait_line(log, "wait 1")
    return log, channel


def test_two_snapshots_at_once_one_is_busy_then_waits(snaplab: Lab) -> None:
    lab = snaplab
    log, channel = running_vm(lab)
    config = config_of(lab, "vm1")
    first = popen(
        lab,
        "vm",
        "snapshot",
        "vm1",
        "s1",
        "--json",
        env={HOST_FAULT_ENV: "vm-snapshot:prepared", HOST_FAULT_SIGNAL_ENV: "STOP"},
    )
    waiting: subprocess.Popen[str] | None = None
    try:
        wait_stopped(first.pid)  # holds the lease, its snapshots prepared
        lease = vvhost_json(lab, "kvm1", "vm", "lease", "vm1")["lease"]
        assert (lease["op"], lease["host"], lease["pid"]) == ("vm-snapshot", "kvm1", first.pid)
        shown = lab.vvhost("kvm1", "vm", "lease", "vm1").stdout
        assert shown.startswith("vm1: busy: vm-snapshot since ") and " on kvm1 " in shown
        before = vvol_names(lab)
        assert "vm1.vda@s1" in before

        second = lab.vvhost("kvm1", "vm", "snapshot", "vm1", "s2")
        assert second.returncode == 4, second.stderr
        lines = second.stderr.strip().splitlines()
        m = BUSY.fullmatch(lines[0]) if len(lines) == 1 else None
        assert m and m.groups() == ("vm-snapshot", "kvm1"), second.stderr
        # nothing changed: the first one's work is still there, no s2 anywhere
        assert vvol_names(lab) == before
        listing = vvhost_json(lab, "kvm1", "vm", "snapshots", "vm1")  # a read: no recovery
        assert listing["points"] == [] and vvol_names(lab) == before
        assert lab.api.lease_show(config)["lease"]["pid"] == first.pid

        waiting = popen(lab, "vm", "snapshot", "vm1", "s2", "--wait", "--json")
        time.sleep(3)
        assert waiting.poll() is None  # waits for the first one
    finally:
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
        if waiting is not None:
            w_out, w_err = waiting.communicate(timeout=300)
    assert first.returncode == 0, err
    assert waiting is not None and waiting.returncode == 0, w_err
    listing = vvhost_json(lab, "kvm1", "vm", "snapshots", "vm1")
    assert [(p["name"], p["parent"]) for p in listing["points"]] == [("s1", None), ("s2", "s1")]
    assert lab.api.lease_show(config)["lease"] is None

    go(channel, log, 1)  # the guest writes B over A
    wait_for_end(log)
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0
    for point in ("s1", "s2"):
        assert lab.vvhost("kvm1", "vm", "revert", "vm1", point).returncode == 0
        see(lab, "vm1", log, "A", "B")
    assert lab.vvhost("kvm1", "vm", "delete", "vm1").returncode == 0
    assert lab.api.vvols() == [] and lab.api.audit()["ok"]


def test_a_killed_holder_is_taken_over_and_its_snapshot_finished(snaplab: Lab) -> None:
    lab = snaplab
    log, channel = running_vm(lab)
    config = config_of(lab, "vm1")
    before = vvol_names(lab)
    conn = libvirt.open(lab.hosts["kvm1"].uri)
    try:
        # killed with the guest paused and the snapshot cut: its lease stays behind
        out = lab.vvhost(
            "kvm1",
            "vm",
            "snapshot",
            "vm1",
            "s1",
            env={HOST_FAULT_ENV: "vm-snapshot:cut", TTL_ENV: "4"},
        )
        assert out.returncode == -signal.SIGKILL, out.stderr
        assert conn.lookupByName("vm1").state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert lab.api.lease_show(config)["lease"]["op"] == "vm-snapshot"

        # another host picked the VM up (once that lease ran out) and died in turn
        deadline = time.monotonic() + 30
        while lab.api.lease_show(config)["lease"] is not None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        lab.api.lease_acquire(config, "kvm2", "vm-revert", 1, 4.0)
        busy = lab.vvhost("kvm1", "vm", "snapshot", "vm1", "s1")
        assert busy.returncode == 4
        m = BUSY.fullmatch(busy.stderr.strip())
        assert m and m.groups() == ("vm-revert", "kvm2"), busy.stderr
        assert conn.lookupByName("vm1").state()[0] == libvirt.VIR_DOMAIN_PAUSED  # untouched

        # after expiry: taken over, the cut-short snapshot dropped, the guest resumed
        t0 = time.monotonic()
        took = lab.vvhost("kvm1", "vm", "snapshot", "vm1", "s1", "--wait", "--json")
        assert took.returncode == 0, took.stderr
        assert "took over the lease of vm-revert" in took.stderr and "on kvm2" in took.stderr
        assert time.monotonic() - t0 < 60
        assert conn.lookupByName("vm1").state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert vvol_names(lab) == before | {"vm1.vda@s1", "vm1.vdb@s1"}
        assert lab.api.lease_show(config)["lease"] is None

        # killed again, now the lease is this host's and its process is gone: at once
        out = lab.vvhost(
            "kvm1", "vm", "snapshot", "vm1", "s2", env={HOST_FAULT_ENV: "vm-snapshot:cut"}
        )
        assert out.returncode == -signal.SIGKILL, out.stderr
        assert conn.lookupByName("vm1").state()[0] == libvirt.VIR_DOMAIN_PAUSED
        again = lab.vvhost("kvm1", "vm", "snapshot", "vm1", "s2", "--json")
        assert again.returncode == 0, again.stderr
        assert "took over the lease of vm-snapshot" in again.stderr
        assert conn.lookupByName("vm1").state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        conn.close()
    listing = vvhost_json(lab, "kvm1", "vm", "snapshots", "vm1")
    assert [p["name"] for p in listing["points"]] == ["s1", "s2"]
    assert lab.api.audit()["ok"]

    go(channel, log, 1)
    wait_for_end(log)
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0
    assert lab.vvhost("kvm1", "vm", "revert", "vm1", "s1").returncode == 0
    see(lab, "vm1", log, "A", "B")
    assert lab.vvhost("kvm1", "vm", "delete", "vm1").returncode == 0
    assert lab.api.vvols() == [] and lab.api.audit()["ok"]
