"""Redo-mode VM snapshots (the array is on ext4: no reflink, so qcow2 layers).

The guest writes A, s1 is taken while it runs, B, s2, then C; reverts to s1 and
to s2 (which survived the revert to s1) show A and B; s1 is deleted with the VM
stopped (``qemu-img commit``) and s2 still holds B, byte for byte; s3 and s4 are
taken and deleted while the guest runs (a middle layer and the active top are
merged by block commit) and the guest's data stays right throughout."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.vmlab import (
    Lab,
    add_go_channel,
    create_vm,
    go,
    log_text,
    see,
    set_cmdline,
    verify_all,
    vvhost_json,
    wait_for_end,
    wait_line,
    write_all,
)
from vvhost.guest import guest_cmdline, parse_serial
from vvhost.host.domainxml import blockdev


def document(lab: Lab, name: str) -> dict[str, Any]:
    config = next(v for v in lab.api.vvols() if v["name"] == f"{name}.config")
    return lab.api.config_get(config["id"])


def no_orphans(lab: Lab, name: str) -> None:
    """Every vvol there is belongs to the VM's live chains or to one of its points."""
    doc = document(lab, name)
    owned = {v["id"] for v in lab.api.vvols() if v["name"] == f"{name}.config"}
    owned |= set(doc["disks"].values())
    chains = list(doc["layers"].values())
    chains += [c for p in doc["points"] for c in p["layers"].values()]
    owned |= {v for c in chains for v in c}
    assert {v["id"] for v in lab.api.vvols()} == owned


def dump(lab: Lab, chain: list[str], out: str, pe: str) -> None:
    """Read a chain of vvols (bottom first) through bindings into a raw file."""
    results = lab.api.bind(chain, "kvm1", pe)
    handles = {r["vvol"]: r["handle"] for r in results}
    try:
        node: dict[str, Any] = {"driver": "raw", "file": blockdev(handles[chain[0]])}
        for vid in chain[1:]:
            node = {"driver": "qcow2", "file": blockdev(handles[vid]), "backing": node}
        # iSCSI layers log in with kvm1's CHAP account (a secret object per account)
        secrets = {
            f"vviscsi-{h['chap_user']}": h["chap_secret"]
            for h in handles.values()
            if h.get("chap_user")
        }
        objects = [a for k, v in secrets.items() for a in ("--object", f"secret,id={k},data={v}")]
        subprocess.run(
            ["qemu-img", "convert", *objects, "-O", "raw", "json:" + json.dumps(node), out],
            check=True,
        )
    finally:
        lab.api.unbind(chain, "kvm1")


def same_image(a: str, b: str) -> bool:
    done = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", a, b], check=False)
    return done.returncode == 0


@pytest.mark.parametrize("protocol", ["iscsi", "nbd"])
def test_redo_snapshot_revert_delete(lab: Lab, protocol: str) -> None:
    cmds = write_all("A") + ["wait"] + write_all("B") + ["wait"] + write_all("C")
    log = create_vm(lab, "vm1", protocol, cmds, keep_running=True)
    channel = add_go_channel(lab, "kvm1", "vm1")
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    wait_line(log, "wait 1")
    s1 = vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s1", "--description", "only A")
    assert s1["running"] and s1["mode"] == "redo", s1
    go(channel, log, 1)
    wait_line(log, "wait 2")
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s2")
    go(channel, log, 2)
    wait_for_end(log)
    assert parse_serial(log_text(log)).ok

    tree = lab.vvhost("kvm1", "vm", "snapshots", "vm1", "--tree").stdout.splitlines()
    assert tree[0] == "vm1" and tree[1].startswith("└── s1") and "redo" in tree[1], tree
    assert tree[2].strip().startswith("└── s2") and tree[3].strip() == "└── now", tree

    out = lab.vvhost("kvm1", "vm", "revert", "vm1", "s1", "--force")
    assert out.returncode == 0, out.stderr
    see(lab, "vm1", log, "A", "B")
    no_orphans(lab, "vm1")
    assert lab.vvhost("kvm1", "vm", "revert", "vm1", "s2").returncode == 0
    see(lab, "vm1", log, "B", "C")
    assert lab.api.bindings() == []

    # delete s1 with the VM stopped: its layer is merged into the disk under it
    s2_chain = document(lab, "vm1")["points"][1]["layers"]["vda"]
    before = os.path.join(lab.tmp, "s2-before.raw")
    dump(lab, s2_chain, before, f"{protocol}0")
    out = lab.vvhost("kvm1", "vm", "snapshot-delete", "vm1", "s1")
    assert out.returncode == 0, out.stderr
    doc = document(lab, "vm1")
    assert [p["name"] for p in doc["points"]] == ["s2"] and doc["current"] == "s2"
    assert len(doc["points"][0]["layers"]["vda"]) == len(s2_chain) - 1
    after = os.path.join(lab.tmp, "s2-after.raw")
    dump(lab, doc["points"][0]["layers"]["vda"], after, f"{protocol}0")
    assert same_image(before, after)
    no_orphans(lab, "vm1")
    see(lab, "vm1", log, "B", "C")

    # s3 and s4 on the running guest, deleted while it runs: block commit
    steps = write_all("D") + ["wait"] + write_all("E") + ["wait"] + verify_all("E")
    steps += ["wait"] + write_all("F") + verify_all("F")
    set_cmdline(lab, "kvm1", "vm1", guest_cmdline(steps, keep_running=True))
    os.unlink(log)
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    wait_line(log, "wait 1")
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s3")
    go(channel, log, 1)
    wait_line(log, "wait 2")
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s4")
    out = lab.vvhost("kvm1", "vm", "snapshot-delete", "vm1", "s3")  # a middle layer
    assert out.returncode == 0, out.stderr
    out = lab.vvhost("kvm1", "vm", "snapshot-delete", "vm1", "s4")  # the active top
    assert out.returncode == 0, out.stderr
    go(channel, log, 2)
    wait_line(log, "wait 3")
    go(channel, log, 3)
    wait_for_end(log)
    assert parse_serial(log_text(log)).ok, log_text(log)
    doc = document(lab, "vm1")
    assert [p["name"] for p in doc["points"]] == ["s2"]
    assert len(doc["layers"]["vda"]) == len(doc["points"][0]["layers"]["vda"])
    no_orphans(lab, "vm1")
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0
    assert lab.api.bindings() == []
    see(lab, "vm1", log, "F", "E")
    out = lab.vvhost("kvm1", "vm", "revert", "vm1", "s2")
    assert out.returncode == 0, out.stderr
    see(lab, "vm1", log, "B", "F")

    # a full clone of s2 reads the chain into plain vvols; a linked one needs COW mode
    refused = lab.vvhost("kvm1", "vm", "clone", "vm1", "vm2", "--snapshot", "s2", "--linked")
    assert refused.returncode == 2 and "full clone" in refused.stderr
    clone_log = os.path.join(lab.tmp, "vm2.serial")
    out = lab.vvhost(
        "kvm1", "vm", "clone", "vm1", "vm2", "--snapshot", "s2", "--serial-log", clone_log
    )
    assert out.returncode == 0, out.stderr
    see(lab, "vm2", clone_log, "B", "F")
    out = lab.vvhost("kvm1", "vm", "delete", "vm1")  # the clone does not need it
    assert out.returncode == 0, out.stderr
    see(lab, "vm2", clone_log, "B", "F")
    assert lab.vvhost("kvm1", "vm", "delete", "vm2").returncode == 0
    assert lab.api.vvols() == [] and lab.api.bindings() == []
    assert lab.api.audit()["ok"]
