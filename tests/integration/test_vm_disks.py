"""``vm extend-disk`` of a stopped VM with ``--fix-gpt``: the vvol grows and the GPT's
backup header moves to the new end (parted then reads the table without warning
and sees the new space); refusals leave the disk as it was."""

from __future__ import annotations

import subprocess

from tests.vmlab import Lab, MiB, create_vm, vvhost_json


def parted(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["parted", "-s", "-m", path, "unit", "s", "print", "free"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_extend_disk_fixes_the_gpt(lab: Lab) -> None:
    create_vm(lab, "vm1", "iscsi", ["sum:vda"], disks=("32M",))
    path = lab.api.vvol("vm1.vda")["path"]
    made = subprocess.run(
        ["parted", "-s", path, "mklabel", "gpt", "mkpart", "data", "1MiB", "16MiB"],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    with open(path, "rb") as fh:
        fh.seek(MiB)
        assert fh.read(8) == bytes(8)
    refused = lab.vvhost("kvm1", "vm", "extend-disk", "vm1", "vdz", "--size", "64M")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert lab.api.vvol("vm1.vda")["size"] == 32 * MiB

    plain = vvhost_json(lab, "kvm1", "vm", "extend-disk", "vm1", "vda", "--size", "48M")
    assert plain["size"] == 48 * MiB and "gpt" not in plain
    assert "fix the GPT" in parted(path).stderr  # the backup header is in the middle now

    fixed = vvhost_json(
        lab, "kvm1", "vm", "extend-disk", "vm1", "vda", "--size", "64M", "--fix-gpt"
    )
    assert fixed["size"] == 64 * MiB and fixed["gpt"]["fixed"]
    table = parted(path)
    assert table.returncode == 0 and "fix" not in table.stderr.lower(), table.stderr
    assert f"{64 * MiB // 512}s" in table.stdout  # the disk is seen whole
    assert "1:2048s:32767s:30720s::data:;" in table.stdout  # the partition is kept
    last_free = [ln for ln in table.stdout.splitlines() if ln.endswith("free;")][-1]
    assert int(last_free.split(":")[2].rstrip("s")) > 60 * MiB // 512  # new space usable
    assert lab.vvhost("kvm1", "vm", "delete", "vm1").returncode == 0
    assert lab.api.vvols() == [] and lab.api.audit()["ok"]
