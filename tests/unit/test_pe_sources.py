"""Pure logic of the endpoints' data sources: QSD node and FUSE export arguments,
tgtd backing stores, LUN choice, Ceph caps and keyrings (no daemon, no cluster)."""

from __future__ import annotations

import pytest

from vvhost.arrays.sources import FileSource, RbdSource
from vvhost.errors import InUse, InvalidInput
from vvhost.pe import PROTOCOLS, secondary_id
from vvhost.pe.base import Attachment
from vvhost.pe.cephaccess import caps_for, entity, host_of
from vvhost.pe.cephkeyring import read_key
from vvhost.pe.iscsi import MAX_LUN, allocate_lun, target_name
from vvhost.pe.nbd import node_args, node_of, secret_of, source_id
from vvhost.tools.tgtadm import Backing

RBD = RbdSource("pool1", "ns1", "vv-1", None, "/c/ceph.conf", "admin", "/c/admin.keyring")


def att(source: FileSource | RbdSource, readonly: bool = False) -> Attachment:
    return Attachment("vv-1.h", "vv-1.h", source, 1 << 20, readonly, "1")


def test_protocol_table() -> None:
    assert PROTOCOLS == ("iscsi", "nbd", "file", "rbd")
    assert secondary_id("nbd", "v1", "h") == "vv-v1.h"
    assert secondary_id("rbd", "v1", "h") == secondary_id("file", "v1", "h") == "v1.h"


def test_qsd_node_for_a_file_keeps_its_name() -> None:
    a = att(FileSource("/a/vvols/v.raw"), readonly=True)
    assert source_id(a.source) == "/a/vvols/v.raw"  # nodes of running daemons stay adoptable
    args = node_args(node_of(a), a)
    assert args["file"] == {
        "driver": "file",
        "filename": "/a/vvols/v.raw",
        "locking": "off",
        "read-only": True,
        "auto-read-only": False,
        "discard": "unmap",
    }


def test_qsd_node_for_rbd() -> None:
    a = att(RBD)
    node = node_of(a)
    assert node != node_of(att(FileSource("vv-1"))) and len(node) == 31
    other = att(RbdSource("pool1", "ns2", "vv-1", conf="/c/ceph.conf"))
    assert node_of(other) != node  # same image name, another namespace
    args = node_args(node, a)
    assert args["driver"] == "raw" and args["node-name"] == node
    assert args["file"] == {
        "driver": "rbd",
        "pool": "pool1",
        "namespace": "ns1",
        "image": "vv-1",
        "conf": "/c/ceph.conf",
        "user": "admin",
        "key-secret": secret_of(node),
        "auth-client-required": ["cephx"],
        "read-only": False,
        "auto-read-only": False,
        "discard": "unmap",
    }
    snap = node_args(node, att(RbdSource("p", "", "i", "s1"), readonly=True))["file"]
    assert snap["snapshot"] == "s1" and "namespace" not in snap and "key-secret" not in snap


def test_tgt_backing_stores() -> None:
    assert Backing("/a/v.raw").params() == "path=/a/v.raw"
    assert Backing("/f/x.raw", bsoflags="direct").params() == "path=/f/x.raw,bsoflags=direct"
    with pytest.raises(ValueError):
        Backing("/a,b").params()


def test_iscsi_serves_rbd_through_fuse_files_and_files_refuse_rbd(tmp_path: str) -> None:
    from vvhost.pe.filepe import FileEndpoint
    from vvhost.pe.fuseexport import export_name
    from vvhost.pe.iscsi import IscsiEndpoint
    from vvhost.tools.qsd import StorageDaemonApi

    other_ns = RbdSource("pool1", "ns2", "vv-1", None, "/c/ceph.conf", "admin")
    names = {export_name(RBD, False), export_name(RBD, True), export_name(other_ns, False)}
    assert len(names) == 3 and all(len(n) == 31 and n.startswith("f") for n in names)
    ep = IscsiEndpoint("i1", "127.0.0.1:3260", 100, str(tmp_path))
    name = export_name(RBD, False)
    assert ep.fuse.path(name) is None  # no daemon yet
    mountpoint = ep.fuse.mountpoint(name)
    assert mountpoint == f"{tmp_path}/fuse/{name}.raw"
    assert ep.fuse.name_in(f"/proc/4242/root{mountpoint}") == name
    assert ep.fuse.name_in(f"{tmp_path}/other/{name}.raw") is None
    assert ep.fuse.name_in("/a/vvols/v.raw") is None and ep.fuse.name_in(None) is None
    assert StorageDaemonApi.fuse_export_args(name, name, mountpoint, writable=False) == {
        "type": "fuse", "id": name, "node-name": name, "mountpoint": mountpoint,
        "writable": False, "growable": False,
    }  # fmt: skip
    node = StorageDaemonApi.rbd_node_args(name, {"pool": "p", "image": "i"}, readonly=True,
                                          nocache=True)  # fmt: skip
    assert node["cache"] == node["file"]["cache"] == {"direct": True}
    fe = FileEndpoint("f1", str(tmp_path), str(tmp_path))
    with pytest.raises(InvalidInput, match="file endpoint f1 serves files only, not rbd data"):
        fe.attach(att(RBD))


def test_lun_choice() -> None:
    assert allocate_lun(set(), set(), None, "h") == 1
    assert allocate_lun({1, 2}, {3}, None, "h") == 4
    assert allocate_lun({1}, {2}, 2, "h") == 2  # its own number back
    assert allocate_lun({1}, set(range(2, MAX_LUN + 1)), None, "h") == 2  # a kept one, at last
    with pytest.raises(InUse):
        allocate_lun(set(range(1, MAX_LUN + 1)), set(), None, "h")
    assert target_name("iqn.x", "PE1", "KVMY") != target_name("iqn.x", "PE1", "kvmy")
    assert target_name("iqn.x", "PE1", None) == "iqn.x:pe1.shared"


def test_ceph_caps_and_names() -> None:
    assert caps_for({"p": {"b", "a"}, "o": {""}}) == {
        "mon": "profile rbd",
        "osd": 'profile rbd pool=o namespace="", '
        "profile rbd pool=p namespace=a, profile rbd pool=p namespace=b",
    }
    assert entity("kvm1") == "client.vvhost-kvm1"
    assert host_of("client.vvhost-kvm1") == "kvm1"
    assert host_of("client.admin") is None


def test_keyring(tmp_path: str) -> None:
    path = f"{tmp_path}/k"
    with open(path, "w", encoding="ascii") as fh:
        fh.write('[client.admin]\n\tkey = AQA1==\n\tcaps mon = "allow *"\n[client.x]\nkey=AQB2==\n')
    assert read_key(path, None) == "AQA1=="
    assert read_key(path, "x") == "AQB2=="
    with pytest.raises(InvalidInput, match="no key for client.y"):
        read_key(path, "y")
