"""Domain XML: safe parsing, vvhost metadata, disk sources from binding handles."""

from __future__ import annotations

import pytest

from vvhost.errors import InvalidInput
from vvhost.host import domainxml as dx
from vvhost.host.diskpolicy import has_policy

ISCSI = {
    "protocol": "iscsi",
    "portal": "127.0.0.1:3260",
    "target": "iqn.x:pe.h1",
    "lun": 3,
    "initiator": "iqn.2026-11.test:h1",
    "uri": "iscsi://127.0.0.1:3260/iqn.x:pe.h1/3",
}
NBD = {
    "protocol": "nbd",
    "export": "vv-1.h1",
    "socket": "/run/nbd.sock",
    "uri": "nbd+unix:///vv-1.h1?socket=/run/nbd.sock",
}
FILE = {"protocol": "file", "path": "/srv/nfs/1.h1", "uri": "file:///srv/nfs/1.h1"}


def test_new_domain_round_trip_and_sources() -> None:
    meta = dx.VmMeta(
        datastore="naa.6" + "0" * 31, config="cfg", disks={"vda": "v1", "vdb": "v2"}, pe="pe0"
    )
    root = dx.new_domain("vm1", 256, 1, meta, "/k", "/i", "console=ttyS0")
    for target, handle in (("vda", ISCSI), ("vdb", NBD)):
        dx.set_source(root, target, handle)
    again = dx.parse(dx.tostring(root))
    assert dx.meta(again) == meta and dx.has_vvhost(dx.tostring(root))
    assert dx.same_source(dx.disk_source(again, "vda"), ISCSI)
    assert dx.same_source(dx.disk_source(again, "vdb"), NBD)
    assert not dx.same_source(dx.disk_source(again, "vda"), {**ISCSI, "lun": 4})
    dx.set_source(again, "vda", FILE)
    assert dx.same_source(dx.disk_source(again, "vda"), FILE)
    assert dx.disk_source(again, "vdz") is None
    assert b"<features><acpi" in dx.tostring(again).encode()


@pytest.mark.parametrize(
    "xml",
    [
        '<!DOCTYPE d [<!ENTITY a "aaaa">]><domain>&a;</domain>',
        "<domain><name>x</name>",
        "<domain>" + "x" * (2 << 20) + "</domain>",
    ],
)
def test_hostile_xml_is_refused(xml: str) -> None:
    with pytest.raises(InvalidInput):
        dx.parse(xml)


def test_domains_without_vvhost_metadata_pass_through() -> None:
    assert dx.meta(dx.parse("<domain><name>plain</name></domain>")) is None


def test_every_disk_stops_on_errors_and_passes_discards() -> None:
    """New domains and domains whose disks are re-pointed (older definitions, a
    VM registered from its config vvol) pause on a full array and unmap."""
    meta = dx.VmMeta(datastore=None, config="cfg", disks={"vda": "v1", "vdb": "v2"})
    root = dx.new_domain("vm1", 256, 1, meta)
    for disk in root.findall("devices/disk"):
        driver = disk.find("driver")
        assert driver is not None
        assert (driver.get("error_policy"), driver.get("rerror_policy")) == ("stop", "stop")
        assert driver.get("discard") == "unmap" and has_policy(driver)
    old = dx.parse(
        "<domain><devices><disk type='file' device='disk'>"
        "<driver name='qemu' type='raw' error_policy='report'/><target dev='vda' bus='virtio'/>"
        "</disk></devices></domain>"
    )
    dx.set_chain(old, "vda", [NBD, FILE])
    driver = old.find("devices/disk/driver")
    assert driver is not None and has_policy(driver) and driver.get("type") == "qcow2"


def test_copy_disk_sources_takes_the_live_domains_chains() -> None:
    """What a migration with a host's token does: the inactive definition keeps its
    own kernel line and takes the sources the destination's hook gave the live one."""
    meta = dx.VmMeta(datastore="naa.6" + "0" * 31, config="cfg", disks={"vda": "v1", "vdb": "v2"})
    inactive = dx.new_domain("vm1", 256, 1, meta, "/k", "/i", "console=ttyS0 next-boot")
    live = dx.new_domain("vm1", 256, 1, meta, "/k", "/i", "console=ttyS0")
    for target in ("vda", "vdb"):
        dx.set_source(inactive, target, ISCSI)
    dx.set_chain(live, "vda", [NBD, FILE])  # a qcow2 layer over a raw bottom
    dx.set_source(live, "vdb", NBD)
    dx.copy_disk_sources(inactive, live, meta)
    again = dx.parse(dx.tostring(inactive))
    assert dx.chain_sources(again, "vda") == dx.chain_sources(live, "vda")
    assert len(dx.chain_sources(again, "vda") or []) == 2
    assert dx.same_source(dx.disk_source(again, "vdb"), NBD)
    assert "next-boot" in dx.tostring(again)
    with pytest.raises(InvalidInput):
        dx.copy_disk_sources(again, dx.parse("<domain><devices/></domain>"), meta)
