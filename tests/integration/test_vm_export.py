"""``vm export`` and ``vm import``: the guest writes A, s1, B, s2, C; the export is a
qcow2 chain per disk (one file per point) that plain libvirt boots without
vvhost and whose points compare equal to the snapshots; importing it back gives
a VM on vvols with the same points."""

from __future__ import annotations

import json
import os
import subprocess

import libvirt

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
    wait_off,
    write_all,
)
from vvhost.guest import guest_cmdline, parse_serial


def same(a: str, b: str, fa: str = "qcow2", fb: str = "raw") -> None:
    out = subprocess.run(
        ["qemu-img", "compare", "-f", fa, "-F", fb, a, b], capture_output=True, text=True
    )
    assert out.returncode == 0, (a, b, out.stdout, out.stderr)


def test_export_boots_without_vvhost_and_imports_back(snaplab: Lab) -> None:
    lab = snaplab
    cmds = write_all("A") + ["wait"] + write_all("B") + ["wait"] + write_all("C")
    log = create_vm(lab, "vm1", "iscsi", cmds, keep_running=True)
    channel = add_go_channel(lab, "kvm1", "vm1")
    assert lab.vvhost("kvm1", "vm", "start", "vm1").returncode == 0
    for n, snap in ((1, "s1"), (2, "s2")):
        wait_line(log, f"wait {n}")
        vvhost_json(lab, "kvm1", "vm", "snapshot", "vm1", snap)
        go(channel, log, n)
    wait_for_end(log)
    refused = lab.vvhost("kvm1", "vm", "export", "vm1", "--to", os.path.join(lab.tmp, "x"))
    assert refused.returncode == 4 and not os.path.exists(os.path.join(lab.tmp, "x"))
    assert lab.vvhost("kvm1", "vm", "stop", "vm1", "--force").returncode == 0

    out_dir = os.path.join(lab.tmp, "export")
    got = vvhost_json(lab, "kvm1", "vm", "export", "vm1", "--to", out_dir)
    assert [os.path.basename(f) for f in got["disks"]["vda"]] == [
        "01-s1.qcow2",
        "02-s2.qcow2",
        "03-current.qcow2",
    ]
    for target in ("vda", "vdb"):
        files = [os.path.join(out_dir, f) for f in got["disks"][target]]
        refs = [f"vm1.{target}@s1", f"vm1.{target}@s2", f"vm1.{target}"]
        for f, ref in zip(files, refs, strict=True):
            same(f, lab.api.vvol(ref)["path"])

    # plain libvirt on another host boots the export: the guest sees C
    lab.add_host("kvm2")
    with open(os.path.join(out_dir, "domain.xml")) as fh:
        xml = fh.read()
    assert "vvhost.org/xmlns" not in xml and "iscsi" not in xml
    conn = libvirt.open(lab.hosts["kvm2"].uri)
    try:
        conn.defineXML(xml)
        set_cmdline(lab, "kvm2", "vm1", guest_cmdline(verify_all("C")))
        os.unlink(log)
        conn.lookupByName("vm1").create()
        wait_off(lab, "kvm2", "vm1")
    finally:
        conn.close()
    report = parse_serial(log_text(log))
    assert report.ok and len(report.results) == 2, report
    assert lab.api.bindings() == []

    # and back onto vvols, points and all
    with open(os.path.join(out_dir, "vm.json")) as fh:
        manifest = json.load(fh)
    assert [p["name"] for p in manifest["points"]] == ["s1", "s2"]
    vvhost_json(lab, "kvm1", "vm", "import", out_dir, "--datastore", "ds", "--name", "vm1b")
    for target in ("vda", "vdb"):
        for point in ("@s1", "@s2", ""):
            a = lab.api.vvol(f"vm1.{target}{point}")["path"]
            b = lab.api.vvol(f"vm1b.{target}{point}")["path"]
            same(a, b, "raw", "raw")
    listing = vvhost_json(lab, "kvm1", "vm", "snapshots", "vm1b")
    assert [p["name"] for p in listing["points"]] == ["s1", "s2"] and listing["current"] == "s2"
    see(lab, "vm1b", log, "C", "B")
    assert lab.vvhost("kvm1", "vm", "revert", "vm1b", "s1").returncode == 0
    see(lab, "vm1b", log, "A", "B")

    bad = lab.vvhost("kvm1", "vm", "import", lab.tmp, "--datastore", "ds", "--name", "vm1c")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    for vm in ("vm1b", "vm1"):
        assert lab.vvhost("kvm1", "vm", "delete", vm).returncode == 0
    assert lab.api.vvols() == [] and lab.api.audit()["ok"]
