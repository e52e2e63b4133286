"""``vvhost vm move-storage``: a VM's disks and snapshot points move to another
container on another array.

- running: the guest writes A, s1, B, s2, C and waits; its storage moves from XFS to
  another XFS array while it runs; every point and the live data read the same as
  before (``qemu-img compare`` against copies taken before), the guest sees C and
  writes on, a revert to s1 shows A, and the old container holds nothing of the VM;
- stopped: one disk first (the config stays with the other), then the rest, onto ext4;
- refused: a linked clone of a point and a container too small are refused up
  front, and the VM stays where it was.  (A ``vvhost`` killed at each step of a
  move: tests/integration/test_crash_points.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.vmlab import (
    Lab,
    MiB,
    add_go_channel,
    boot,
    create_vm,
    go,
    log_text,
    see,
    set_cmdline,
    verify_all,
    vvhost_json,
    wait_line,
    write_all,
)
from vvhost.guest import guest_cmdline, parse_serial
from vvhost.units import parse_size


@pytest.fixture
def xfs_dir(xfs_mount: str) -> Iterator[str]:
    """A second array directory on the XFS loop mount (another array, reflink too)."""
    path = tempfile.mkdtemp(dir=xfs_mount)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def add_container(lab: Lab, name: str, path: str, capacity: str) -> None:
    """A container on its own array, made part of datastore ``ds``."""
    lab.api.array_add(f"{name}-array", "dir", path)
    lab.api.container_create(name, capacity, arrays=[f"{name}-array"])
    ds = lab.api.datastore("ds")
    lab.api.datastore_extend("ds", int(ds["capacity"]) + parse_size(capacity))
    assert name in lab.api.datastore("ds")["container_names"]


def images(lab: Lab, vm: str) -> dict[tuple[str, str], str]:
    """(point or "now", target) -> the file of that vvol."""
    out: dict[tuple[str, str], str] = {}
    for p in vvhost_json(lab, "kvm1", "vm", "snapshots", vm)["points"]:
        for target, vvol in p["disks"].items():
            out[(p["name"], target)] = lab.api.vvol(vvol)["path"]
    for d in vvhost_json(lab, "kvm1", "vm", "show", vm)["disks"]:
        out[("now", d["target"])] = lab.api.vvol(d["vvol"])["path"]
    return out


def copy_aside(files: dict[tuple[str, str], str], where: str) -> dict[tuple[str, str], str]:
    os.makedirs(where, exist_ok=True)
    out = {}
    for (point, target), path in files.items():
        out[(point, target)] = os.path.join(where, f"{point}-{target}.raw")
        subprocess.run(["cp", "--sparse=always", path, out[(point, target)]], check=True)
    return out


def assert_same(before: dict[tuple[str, str], str], after: dict[tuple[str, str], str]) -> None:
    assert set(before) == set(after)
    for key, path in before.items():
        done = subprocess.run(
            ["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", path, after[key]],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{key} differs after the move: {done.stdout}{done.stderr}"


def containers_of(lab: Lab, vm: str) -> dict[str, set[str]]:
    """container -> names of the VM's vvols there."""
    out: dict[str, set[str]] = {}
    for v in lab.api.vvols():
        if v["name"] and v["name"].startswith(f"{vm}."):
            out.setdefault(v["container"], set()).add(v["name"])
    return out


def test_move_running_vm_with_snapshots(snaplab: Lab, xfs_dir: str) -> None:
    lab = snaplab
    cmds = write_all("A") + ["wait"] + write_all("B") + ["wait"] + write_all("C") + ["wait"]
    cmds += verify_all("C") + ["write:vda:E:8:2", "verify:vda:E:8:2"]
    log = create_vm(lab, "vm1", "iscsi", cmds + ["wait"], keep_running=True)
    channel = add_go_channel(lab, "kvm1", "vm1")
    add_container(lab, "pool2", xfs_dir, "4G")  # after the VM: its vvols are in "pool"
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    wait_line(log, "wait 1")
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s1")
    go(channel, log, 1)
    wait_line(log, "wait 2")
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s2")
    go(channel, log, 2)
    wait_line(log, "wait 3")  # C written; the guest idles while its storage moves
    before = copy_aside(images(lab, "vm1"), os.path.join(lab.tmp, "before"))

    moved = vvhost_json(lab, "kvm1", "vm", "move-storage", "vm1", "--container", "pool2")
    assert moved["running"] and moved["container"] == "pool2"
    assert {d["target"]: d["points"] for d in moved["disks"]} == {"vda": 2, "vdb": 2}
    assert vvhost_json(lab, "kvm1", "vm", "show", "vm1")["state"] == "running"
    assert containers_of(lab, "vm1") == {
        "pool2": {"vm1.config", "vm1.vda", "vm1.vdb"}
        | {f"vm1.{t}@{p}" for t in ("vda", "vdb") for p in ("s1", "s2")}
    }
    assert lab.api.vvols(container="pool") == []
    assert_same(before, images(lab, "vm1"))
    live = lab.api.vvol("vm1.vda")  # 64M, 4M written: the block copy kept the holes
    assert live["used"] <= 16 * MiB, live["used"]

    go(channel, log, 3)  # the guest reads C from the new vvols and writes on
    wait_line(log, "wait 4")
    report = parse_serial(log_text(log))
    assert all(v == "ok" for v in report.results.values()), report
    assert "error" not in log_text(log)
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0
    assert lab.api.bindings() == []

    assert lab.vvhost("kvm1", "vm", "revert", "vm1", "s1").returncode == 0
    see(lab, "vm1", log, "A", "B")
    assert lab.vvhost("kvm1", "vm", "revert", "vm1", "s2").returncode == 0
    see(lab, "vm1", log, "B", "C")
    assert vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", "s3")["mode"] == "cow"
    assert lab.api.vvols(container="pool") == [] and lab.api.bindings() == []
    assert lab.api.audit()["ok"]


def test_move_stopped_vm_one_disk_then_all(snaplab: Lab, tmp_path: str) -> None:
    lab = snaplab
    log = create_vm(lab, "vm2", "iscsi", write_all("A"))
    add_container(lab, "pool2", os.path.join(str(tmp_path), "ext4-array"), "4G")
    assert parse_serial(boot(lab, "vm2", log)).ok
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm2", "s1")
    set_cmdline(lab, "kvm1", "vm2", guest_cmdline(write_all("B")))
    assert parse_serial(boot(lab, "vm2", log)).ok
    before = copy_aside(images(lab, "vm2"), os.path.join(lab.tmp, "before"))

    one = vvhost_json(
        lab, "kvm1", "vm", "move-storage", "vm2", "--container", "pool2", "--disk", "vda"
    )
    assert not one["running"] and [d["target"] for d in one["disks"]] == ["vda"]
    assert containers_of(lab, "vm2") == {
        "pool2": {"vm2.vda", "vm2.vda@s1"},
        "pool": {"vm2.config", "vm2.vdb", "vm2.vdb@s1"},
    }
    assert_same(before, images(lab, "vm2"))
    rest = vvhost_json(lab, "kvm1", "vm", "move-storage", "vm2", "--container", "pool2")
    assert [d["target"] for d in rest["disks"]] == ["vdb"]
    assert set(containers_of(lab, "vm2")) == {"pool2"}
    assert_same(before, images(lab, "vm2"))
    again = lab.vvhost("kvm1", "vm", "move-storage", "vm2", "--container", "pool2")
    assert again.returncode == 4 and "already in container pool2" in again.stderr

    see(lab, "vm2", log, "B", "A")
    assert lab.vvhost("kvm1", "vm", "revert", "vm2", "s1").returncode == 0
    see(lab, "vm2", log, "A", "B")
    assert lab.api.vvols(container="pool") == [] and lab.api.bindings() == []
    assert lab.api.audit()["ok"]


def test_move_refused_up_front(snaplab: Lab, xfs_dir: str, tmp_path: str) -> None:
    lab = snaplab
    log = create_vm(lab, "vm3", "iscsi", write_all("A"), keep_running=True)
    add_container(lab, "small", os.path.join(str(tmp_path), "small-array"), "100M")
    add_container(lab, "pool2", xfs_dir, "4G")
    assert lab.vvhost("kvm1", "vm", "start", "vm3").returncode == 0
    wait_line(log, "END")
    vvhost_json(lab, "kvm1", "vm", "snapshot", "vm3", "s1")
    everything = {"vm3.config", "vm3.vda", "vm3.vdb", "vm3.vda@s1", "vm3.vdb@s1"}

    clone_log = os.path.join(lab.tmp, "vm3c.serial")
    out = lab.vvhost(
        "kvm1", "vm", "clone", "vm3", "vm3c", "--snapshot", "s1", "--linked",
        "--serial-log", clone_log,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    refused = lab.vvhost("kvm1", "vm", "move-storage", "vm3", "--container", "pool2")
    assert refused.returncode == 4 and "vm3c.vda, vm3c.vdb" in refused.stderr, refused.stderr
    assert lab.vvhost("kvm1", "vm", "delete", "vm3c").returncode == 0

    refused = lab.vvhost("kvm1", "vm", "move-storage", "vm3", "--container", "small")
    assert refused.returncode == 5 and "'small'" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1
    nowhere = lab.vvhost("kvm1", "vm", "move-storage", "vm3", "--container", "nope")
    assert nowhere.returncode == 3
    assert containers_of(lab, "vm3") == {"pool": everything}

    assert lab.api.vvols(container="pool2") == [] and lab.api.vvols(container="small") == []
    assert {b["vvol"] for b in lab.api.bindings()} == set(
        d["vvol"] for d in vvhost_json(lab, "kvm1", "vm", "show", "vm3")["disks"]
    )
    assert lab.api.audit()["ok"]
