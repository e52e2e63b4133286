"""``vm show`` reports each disk's space figures and the VM's totals, after a
real guest wrote into its disks (a private libvirtd host, file endpoint)."""

from __future__ import annotations

import json
from typing import Any

from tests.vmlab import Lab, MiB, boot, create_vm
from vvhost.guest import parse_serial


def test_vm_show_reports_space(lab: Lab) -> None:
    log = create_vm(lab, "vm1", "file", ["write:vda:A:1:4", "verify:vda:A:1:4"])
    report = parse_serial(boot(lab, "vm1", log))
    assert report.ok and report.results["verify:vda:A:1:4"] == "ok", report
    disks = json.loads(lab.vvhost("kvm1", "vm", "show", "vm1", "--json").stdout)["disks"]
    vda = next(d for d in disks if d["target"] == "vda")
    lab.api.container_refresh(lab.api.vvol(vda["vvol"])["container"])
    shown: dict[str, Any] = json.loads(lab.vvhost("kvm1", "vm", "show", "vm1", "--json").stdout)
    space = shown["space"]
    assert space["provisioned"] == sum(d["provisioned"] for d in shown["disks"]) == 96 * MiB
    assert space["allocated"] == sum(d["allocated"] for d in shown["disks"])
    vda = next(d for d in shown["disks"] if d["target"] == "vda")
    assert vda["allocated"] >= 4 * MiB and vda["unique"] is not None
    assert space["snapshots_unique"] == 0
