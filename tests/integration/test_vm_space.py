"""A guest on a full array is paused, not failed, and goes on with its data intact
once there is space again; a guest's discards give space back to the array.

One lab for the module: a ``dir`` array on a small ext4 loop file system (so the
test can fill it), endpoints file0/nbd0/iscsi0, kvm1 with a private libvirtd::

    array a1: LOOP-EXT4/array/      vvol files (sparse)
              LOOP-EXT4/filler-*    made by the test to leave only a few MiB free

Running out: the guest writes 24 MiB of a known pattern with only 8 MiB free;
QEMU stops it (error_policy='stop'), ``vm show``/``vm list`` say "paused: no
space", ``vm resume`` while still full fails and leaves it paused, ``vm resume
--when-space`` waits; the test deletes the filler, the guest goes on and verifies
the whole pattern, and the vvol file holds it byte for byte; the event log has
the pause (once) and the resume.

Space comes back: the guest writes 8 MiB, waits while the test measures the
vvol's allocated bytes, then discards 6 MiB of it (blkdiscard); the allocation on
the array shrinks by about that (NBD trim / SCSI UNMAP -> hole punching), and the
2 MiB kept still verify.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.fsfixtures import loop_capability, make_loop_fs
from tests.vmlab import (
    Lab,
    MiB,
    add_go_channel,
    create_vm,
    disk_drivers,
    go,
    log_text,
    running_lab,
    vvhost_json,
    wait_line,
    wait_off,
)
from vvhost.fsutil import allocated_bytes
from vvhost.guest import GuestImage, parse_serial, pattern_bytes

FREE_MIB = 8  # what the filler leaves free on the array's file system
WRITE_MIB = 24  # what the guest writes: three times that


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory, guest: GuestImage) -> Iterator[Lab]:
    reason = loop_capability("ext4")
    if reason:
        pytest.skip(f"no loop file system on this machine: {reason}")
    base = str(tmp_path_factory.mktemp("space"))
    with make_loop_fs(base, "ext4", "192M") as mnt:
        array_dir = os.path.join(mnt, "array")
        os.mkdir(array_dir)
        with running_lab(os.path.join(base, "lab"), guest, array_dir) as lab:
            yield lab


def _mount_of(lab: Lab, vvol: str) -> str:
    """The file system the vvol's file is on (the loop ext4)."""
    path = os.path.dirname(vvol_path(lab, vvol))
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    assert path != "/", "the array is not on its own file system"
    return path


def vvol_path(lab: Lab, vvol: str) -> str:
    path = lab.api.vvol(vvol)["path"]
    assert path and os.path.exists(path), path
    return str(path)


def disk_vvol(lab: Lab, vm: str, target: str = "vda") -> str:
    shown = vvhost_json(lab, "kvm1", "vm", "show", vm)
    return next(d["vvol"] for d in shown["disks"] if d["target"] == target)


def fill(mount: str, name: str, leave: int) -> str:
    """A file taking all but ``leave`` bytes of ``mount``'s free space."""
    st = os.statvfs(mount)
    size = st.f_bfree * st.f_frsize - leave
    assert size > 0, f"{mount} has less than {leave} bytes free"
    path = os.path.join(mount, name)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return path


def wait_state(lab: Lab, vm: str, state: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (now := vvhost_json(lab, "kvm1", "vm", "show", vm)["state"]) != state:
        assert time.monotonic() < deadline, f"{vm} is {now!r}, never {state!r}"
        time.sleep(0.5)


@pytest.mark.parametrize("protocol", ["nbd", "iscsi", "file"])
def test_full_array_pauses_the_guest_and_resume_keeps_its_data(space: Lab, protocol: str) -> None:
    lab, vm = space, f"full{protocol}"
    cmds = [f"write:vda:F{protocol}:0:{WRITE_MIB}", f"verify:vda:F{protocol}:0:{WRITE_MIB}"]
    log = create_vm(lab, vm, protocol, cmds, disks=(f"{WRITE_MIB + 8}M",))
    vvol = disk_vvol(lab, vm)
    mount = _mount_of(lab, vvol)
    filler = fill(mount, f"filler-{protocol}", FREE_MIB * MiB)
    waiter: subprocess.Popen[str] | None = None
    try:
        idle = lab.vvhost("kvm1", "vm", "resume", vm)  # shut off: nothing to resume
        assert idle.returncode != 0 and idle.stderr.strip().endswith(f"VM {vm} is not paused")
        assert lab.vvhost("kvm1", "vm", "start", vm).returncode == 0
        wait_state(lab, vm, "paused: no space")
        driver = disk_drivers(lab, "kvm1", vm)["vda"]
        assert (driver.get("error_policy"), driver.get("discard")) == ("stop", "unmap"), driver
        listed = {r["name"]: r["state"] for r in vvhost_json(lab, "kvm1", "vm", "list")}
        assert listed[vm] == "paused: no space"
        # still full: resume says so in one line and the VM stays paused
        again = lab.vvhost("kvm1", "vm", "resume", vm)
        assert again.returncode != 0
        assert again.stderr.strip().count("\n") == 0, again.stderr
        assert "paused again" in again.stderr and "still full" in again.stderr, again.stderr
        assert vvhost_json(lab, "kvm1", "vm", "show", vm)["state"] == "paused: no space"
        # resume --when-space waits for space; the test adds it by deleting the filler
        env = {**os.environ, "VVHOST_HOST_CONF": lab.confs["kvm1"]}
        waiter = subprocess.Popen(
            [sys.executable, "-m", "vvhost", "vm", "resume", vm, "--when-space"]
            + ["--interval", "0.5", "--timeout", "120", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        time.sleep(4)
        assert waiter.poll() is None, waiter.communicate()
        assert "paused" in vvhost_json(lab, "kvm1", "vm", "show", vm)["state"]
        os.unlink(filler)
        out, err = waiter.communicate(timeout=150)
        assert waiter.returncode == 0, err
        assert json.loads(out)["state"] in ("running", "shut off")
        # the control plane's event log has the pause (once, however often it was seen) and
        # the resume
        seen = [
            (e["kind"], e["fields"]["disks"])
            for e in lab.api.events()["events"]
            if e["subject"] == f"vm:kvm1/{vm}"
        ]
        assert seen == [("vm.paused-for-space", ["vda"]), ("vm.resumed", [])], seen
        wait_off(lab, "kvm1", vm, timeout=180)
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.wait()
        if os.path.exists(filler):
            os.unlink(filler)
        if lab.vvhost("kvm1", "vm", "show", vm, "--json").returncode == 0:
            lab.vvhost("kvm1", "vm", "stop", vm, "--force")
    report = parse_serial(log_text(log))
    assert report.ok, report
    assert report.results[cmds[0]] == "ok" and report.results[cmds[1]] == "ok", report
    with open(vvol_path(lab, vvol), "rb") as fh:
        assert fh.read(WRITE_MIB * MiB) == pattern_bytes(f"F{protocol}", 0, WRITE_MIB)
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]
    assert lab.vvhost("kvm1", "vm", "delete", vm).returncode == 0


@pytest.mark.parametrize("protocol", ["nbd", "iscsi"])
def test_guest_discard_gives_space_back_to_the_array(space: Lab, protocol: str) -> None:
    lab, vm = space, f"trim{protocol}"
    cmds = [
        f"write:vda:D{protocol}:0:8",
        "wait",
        "discard:vda:0:6",
        f"verify:vda:D{protocol}:6:2",
    ]
    log = create_vm(lab, vm, protocol, cmds, disks=("16M",))
    channel = add_go_channel(lab, "kvm1", vm)
    path = vvol_path(lab, disk_vvol(lab, vm))
    try:
        assert lab.vvhost("kvm1", "vm", "start", vm).returncode == 0
        wait_line(log, "wait 1", timeout=180)
        policy = {"error_policy": "stop", "rerror_policy": "stop", "discard": "unmap"}
        driver = disk_drivers(lab, "kvm1", vm)["vda"]
        assert policy.items() <= driver.items(), driver
        before = allocated_bytes(path)
        assert before >= 8 * MiB, before
        go(channel, log, 1)
        wait_off(lab, "kvm1", vm, timeout=180)
    finally:
        lab.vvhost("kvm1", "vm", "stop", vm, "--force")
    after = allocated_bytes(path)
    report = parse_serial(log_text(log))
    assert report.ok, report
    assert report.results["discard:vda:0:6"] == "ok", report
    assert before - after >= 5 * MiB, f"{protocol}: allocated {before} -> {after}"
    with open(path, "rb") as fh:
        fh.seek(6 * MiB)
        assert fh.read(2 * MiB) == pattern_bytes(f"D{protocol}", 6, 2)
    assert lab.api.bindings() == [] and lab.api.audit()["ok"]
    assert lab.vvhost("kvm1", "vm", "delete", vm).returncode == 0
