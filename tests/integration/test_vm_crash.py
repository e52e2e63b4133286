"""kill -9 of ``vvhost`` in the middle of a VM snapshot and of a VM revert (COW
mode, on XFS).  The next command that touches the VM finishes the job: the
half-taken snapshot is dropped and the paused guest resumed; the half-done
revert goes back to where the VM was.  The VM then boots and sees exactly one
consistent point on all its disks, and nothing is orphaned."""

from __future__ import annotations

import signal

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
from vvhost.faults import HOST_FAULT_ENV


def killed_at(lab: Lab, fault: str, *args: str) -> None:
    out = lab.vvhost("kvm1", *args, env={HOST_FAULT_ENV: fault})
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stderr)


def vvol_names(lab: Lab) -> set[str]:
    return {v["name"] for v in lab.api.vvols()}


def test_kill_during_snapshot_and_during_revert(snaplab: Lab) -> None:
    lab = snaplab
    log = create_vm(
        lab, "vm1", "iscsi", write_all("A") + ["wait"] + write_all("B"), keep_running=True
    )
    channel = add_go_channel(lab, "kvm1", "vm1")
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    wait_line(log, "wait 1")
    before = vvol_names(lab)

    # killed with the snapshots prepared (catalog only), then with them taken and the
    # guest still paused: either way the next command drops them and the guest runs
    conn = libvirt.open(lab.hosts["kvm1"].uri)
    try:
        for fault, paused in (("vm-snapshot:prepared", False), ("vm-snapshot:cut", True)):
            killed_at(lab, fault, "vm", "snapshot", "vm1", "s1")
            state = conn.lookupByName("vm1").state()[0]
            assert state == (libvirt.VIR_DOMAIN_PAUSED if paused else libvirt.VIR_DOMAIN_RUNNING)
            assert "vm1.vda@s1" in vvol_names(lab)
            listing = vvhost_json(lab, "kvm1", "vm", "snapshots", "vm1")  # recovers
            assert listing["points"] == [] and vvol_names(lab) == before
            assert conn.lookupByName("vm1").state()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert lab.api.audit()["ok"]
    finally:
        conn.close()

    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s1")
    go(channel, log, 1)
    wait_for_end(log)
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0

    # killed with vda reverted to s1 and vdb not: recovery puts both back at B
    killed_at(lab, "vm-revert:one-reverted", "vm", "revert", "vm1", "s1")
    assert any("@safety-" in n for n in vvol_names(lab))
    listing = vvhost_json(lab, "kvm1", "vm", "snapshots", "vm1")
    assert [p["name"] for p in listing["points"]] == ["s1"]
    assert not any("@safety-" in n for n in vvol_names(lab))
    see(lab, "vm1", log, "B", "A")
    assert lab.api.audit()["ok"] and lab.api.bindings() == []

    # and the revert itself still works afterwards
    assert lab.vvhost("kvm1", "vm", "revert", "vm1", "s1").returncode == 0
    see(lab, "vm1", log, "A", "B")
    assert lab.vvhost("kvm1", "vm", "delete", "vm1").returncode == 0
    assert lab.api.vvols() == [] and lab.api.audit()["ok"]
