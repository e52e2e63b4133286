"""VM snapshots on a running guest: the guest writes A, s1 is taken, it writes B,
s2, then C; reverts to s1 and to s2 (which survived the revert to s1) show A and
B; s1 is deleted while s2 stays; a linked clone of s2 boots and sees B and keeps
its parent; a running VM's disk grows and the guest sees it."""

from __future__ import annotations

import os
import socket

from tests.vmlab import (
    VDA_MIB,
    Lab,
    MiB,
    add_go_channel,
    create_vm,
    go,
    grow_online,
    log_text,
    see,
    vvhost_json,
    wait_for_end,
    wait_line,
    write_all,
)
from vvhost.guest import parse_serial, pattern_bytes


def test_snapshot_revert_delete_clone_extend(snaplab: Lab) -> None:
    lab = snaplab
    cmds = write_all("A") + ["wait"] + write_all("B") + ["wait"] + write_all("C")
    log = create_vm(lab, "vm1", "iscsi", cmds, keep_running=True)
    channel = add_go_channel(lab, "kvm1", "vm1")
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    wait_line(log, "wait 1")
    s1 = vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s1", "--description", "only A")
    assert s1["running"] and s1["mode"] == "cow" and s1["stun_ms"] > 0
    go(channel, log, 1)
    wait_line(log, "wait 2")
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s2")
    go(channel, log, 2)
    wait_for_end(log)
    assert parse_serial(log_text(log)).ok

    refused = lab.vvhost("kvm1", "vm", "revert", "vm1", "s1")
    assert refused.returncode == 4 and "running" in refused.stderr
    assert refused.stderr.count("\n") == 1
    out = lab.vvhost("kvm1", "vm", "revert", "vm1", "s1", "--force")
    assert out.returncode == 0, out.stderr
    see(lab, "vm1", log, "A", "B")
    assert lab.vvhost("kvm1", "vm", "revert", "vm1", "s2").returncode == 0
    see(lab, "vm1", log, "B", "C")

    tree = lab.vvhost("kvm1", "vm", "snapshots", "vm1", "--tree").stdout.splitlines()
    assert tree[0] == "vm1" and tree[1].startswith("└── s1") and "'only A'" in tree[1]
    assert tree[2].strip().startswith("└── s2") and tree[3].strip() == "└── now", tree

    assert lab.vvhost("kvm1", "vm", "snapshot-delete", "vm1", "s1").returncode == 0
    listing = vvhost_json(lab, "kvm1", "vm", "snapshots", "vm1")
    assert [p["name"] for p in listing["points"]] == ["s2"] and listing["current"] == "s2"
    assert listing["points"][0]["parent"] is None

    clone_log = os.path.join(lab.tmp, "vm2.serial")
    out = lab.vvhost(
        "kvm1", "vm", "clone", "vm1", "vm2", "--snapshot", "s2", "--linked",
        "--serial-log", clone_log,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    see(lab, "vm2", clone_log, "B", "A")
    refused = lab.vvhost("kvm1", "vm", "snapshot-delete", "vm1", "s2")
    assert refused.returncode == 4 and "linked clones use it" in refused.stderr
    refused = lab.vvhost("kvm1", "vm", "delete", "vm1")
    assert refused.returncode == 4 and "still used by vm2" in refused.stderr

    grow_online(lab, log, channel)  # the running guest sees the new size at once
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0

    for vm in ("vm2", "vm1"):
        out = lab.vvhost("kvm1", "vm", "delete", vm)
        assert out.returncode == 0, out.stderr
    assert lab.api.vvols() == [] and lab.api.bindings() == []
    assert lab.api.audit()["ok"]


def test_memory_snapshot_resumes_where_the_guest_was(snaplab: Lab) -> None:
    lab = snaplab
    cmds = write_all("A") + ["wait"] + write_all("B") + ["wait"]
    log = create_vm(lab, "vm1", "iscsi", cmds, keep_running=True)
    channel = add_go_channel(lab, "kvm1", "vm1")
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    wait_line(log, "wait 1")
    point = vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "m1", "--memory")
    assert point["memory"] and point["running"]
    assert lab.api.vvol(point["memory"])["type"] == "memory"
    go(channel, log, 1)
    wait_line(log, "wait 2")
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0
    vda = lab.api.vvol("vm1.vda")["path"]
    with open(vda, "rb") as fh:
        assert fh.read(VDA_MIB * MiB) == pattern_bytes("B", 0, VDA_MIB)

    os.unlink(log)
    out = vvhost_json(lab, "kvm1", "vm", "revert", "vm1", "m1")
    assert out["started"]  # resumed from memory, not booted
    with open(vda, "rb") as fh:
        assert fh.read(VDA_MIB * MiB) == pattern_bytes("A", 0, VDA_MIB)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(channel)  # the guest still waits where it was: let it go on
        sock.sendall(b"go\n")
    wait_line(log, "wait 2")
    after = log_text(log)
    assert "VVTEST go 1" in after and "VVTEST BEGIN" not in after, after
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0
    assert lab.vvhost("kvm1", "vm", "snapshot-delete", "vm1", "m1").returncode == 0
    assert lab.vvhost("kvm1", "vm", "delete", "vm1").returncode == 0
    assert lab.api.vvols() == [] and lab.api.bindings() == [] and lab.api.audit()["ok"]
