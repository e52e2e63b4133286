"""Binding handles per protocol: libvirt disk XML, QEMU blockdev options, qemu-img
arguments, read-only handling and "same data" - each class through the one table."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from vvhost.errors import InvalidInput
from vvhost.host import cephsecret, qemuwrap
from vvhost.host import domainxml as dx
from vvhost.host import handles as hd
from vvhost.host.handles import FileHandle, HostAccess
from vvhost.host.handles.iscsi import IscsiHandle
from vvhost.host.handles.nbd import NbdHandle
from vvhost.host.handles.rbd import RbdHandle

KEY = base64.b64encode(bytes(range(16)) + b"vvhost-test-key!").decode()
ISCSI = {
    "protocol": "iscsi",
    "portal": "127.0.0.1:3260",
    "target": "iqn.x:pe.h1",
    "lun": 3,
    "initiator": "iqn.2026-11.test:h1",
    "uri": "iscsi://127.0.0.1:3260/iqn.x:pe.h1/3",
}
NBD_UNIX = {
    "protocol": "nbd",
    "export": "vv-1.h1",
    "socket": "/run/nbd.sock",
    "uri": "nbd+unix:///vv-1.h1?socket=/run/nbd.sock",
}
NBD_TCP = {
    "protocol": "nbd",
    "export": "vv-1.h1",
    "socket": None,
    "uri": "nbd://127.0.0.1:10809/vv-1.h1",
}
FILE = {"protocol": "file", "path": "/srv/nfs/1.h1", "uri": "file:///srv/nfs/1.h1"}
RBD = {
    "protocol": "rbd",
    "uri": "rbd:vvpool/tenant-a/vv-1",
    "pool": "vvpool",
    "namespace": "tenant-a",
    "image": "vv-1",
    "snap": None,
    "monitors": ["127.0.0.1:46789", "[::1]:46790"],
    "user": "vvhost-h1",
    "key": KEY,
    "readonly": False,
}


def disk_root() -> ET.Element:
    return ET.fromstring(
        "<domain><devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )


def test_one_table_finds_every_protocol() -> None:
    assert set(hd.PROTOCOLS) == {"file", "iscsi", "nbd", "rbd"}
    for raw, cls in (
        (FILE, FileHandle),
        (ISCSI, IscsiHandle),
        (NBD_UNIX, NbdHandle),
        (RBD, RbdHandle),
    ):
        assert type(hd.of(dict(raw))) is cls
    with pytest.raises(InvalidInput, match="unknown protocol 'smb'"):
        hd.of({"protocol": "smb", "uri": "smb://x"})


@pytest.mark.parametrize("raw", [FILE, ISCSI, NBD_UNIX, NBD_TCP, RBD], ids=lambda r: r["uri"])
def test_xml_written_reads_back_as_the_same_data(raw: dict[str, Any]) -> None:
    root = disk_root()
    dx.set_source(root, "vda", dict(raw))
    again = dx.parse(dx.tostring(root))
    assert dx.same_source(dx.disk_source(again, "vda"), raw)
    assert hd.of(dict(raw)).same(dx.disk_source(again, "vda"))
    others = [r for r in (FILE, ISCSI, NBD_UNIX, NBD_TCP, RBD) if r is not raw]
    assert not any(dx.same_source(dx.disk_source(again, "vda"), o) for o in others)


def test_file_handle() -> None:
    h = hd.of(dict(FILE))
    root = disk_root()
    dx.set_source(root, "vda", FILE)
    disk = root.find("devices/disk")
    assert disk is not None and disk.get("type") == "file"
    assert ET.tostring(disk.find("source"), encoding="unicode") == '<source file="/srv/nfs/1.h1" />'
    assert h.blockdev() == {"driver": "file", "filename": "/srv/nfs/1.h1"}
    assert h.image_args() == ["-f", "raw", "file:///srv/nfs/1.h1"]
    assert h.image_args(target=True) == ["-O", "raw", "file:///srv/nfs/1.h1"]


def test_iscsi_handle() -> None:
    h = hd.of(dict(ISCSI))
    src = h.source_element()
    assert src.attrib == {"protocol": "iscsi", "name": "iqn.x:pe.h1/3"}
    host = src.find("host")
    assert host is not None and host.attrib == {"name": "127.0.0.1", "port": "3260"}
    iqn = src.find("initiator/iqn")
    assert iqn is not None and iqn.get("name") == "iqn.2026-11.test:h1"
    assert h.blockdev() == {
        "driver": "iscsi",
        "transport": "tcp",
        "portal": "127.0.0.1:3260",
        "target": "iqn.x:pe.h1",
        "lun": 3,
        "initiator-name": "iqn.2026-11.test:h1",
    }
    assert h.image_args(target=True) == [
        "--target-image-opts",
        "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:3260,"
        "file.target=iqn.x:pe.h1,file.lun=3,file.initiator-name=iqn.2026-11.test:h1",
    ]
    plain = hd.of({**ISCSI, "initiator": None})
    assert plain.image_args() == ["-f", "raw", ISCSI["uri"]]
    assert "initiator-name" not in plain.blockdev()
    assert not hd.of(dict(ISCSI)).same({**h.key(), "name": "iqn.x:pe.h1/4"})


def test_nbd_handle_unix_and_tcp() -> None:
    unix = hd.of(dict(NBD_UNIX))
    host = unix.source_element().find("host")
    assert host is not None and host.attrib == {"transport": "unix", "socket": "/run/nbd.sock"}
    assert unix.blockdev() == {
        "driver": "nbd",
        "server": {"type": "unix", "path": "/run/nbd.sock"},
        "export": "vv-1.h1",
    }
    assert unix.image_args() == ["-f", "raw", NBD_UNIX["uri"]]
    tcp = hd.of(dict(NBD_TCP))
    assert tcp.blockdev()["server"] == {"type": "inet", "host": "127.0.0.1", "port": "10809"}
    assert tcp.source_element().get("tls") is None and tcp.objects() == []
    assert hd.no_online_resize(tcp.key()) and not hd.no_online_resize(hd.of(dict(RBD)).key())


def test_rbd_disk_xml_names_pool_namespace_image_and_the_hosts_secret() -> None:
    root = disk_root()
    dx.set_source(root, "vda", dict(RBD))
    disk = root.find("devices/disk")
    assert disk is not None and disk.get("type") == "network"
    src = disk.find("source")
    assert src is not None
    assert src.attrib == {"protocol": "rbd", "name": "vvpool/tenant-a/vv-1"}
    assert [(h.get("name"), h.get("port")) for h in src.findall("host")] == [
        ("127.0.0.1", "46789"),
        ("::1", "46790"),
    ]
    auth = src.find("auth")
    assert auth is not None and auth.get("username") == "vvhost-h1"
    secret = auth.find("secret")
    assert secret is not None and secret.get("type") == "ceph"
    assert secret.get("uuid") == cephsecret.secret_uuid("vvhost-h1")
    assert disk.find("readonly") is None
    # the default namespace is POOL/IMAGE
    assert hd.of({**RBD, "namespace": ""}).source_element().get("name") == "vvpool/vv-1"


def test_rbd_same_data_is_pool_namespace_image_snapshot() -> None:
    h = hd.of(dict(RBD))
    assert h.same(hd.of({**RBD, "monitors": ["10.0.0.1:6789"], "user": "vvhost-h2"}).key())
    for other in ({"namespace": "tenant-b"}, {"image": "vv-2"}, {"pool": "p2"}, {"snap": "s1"}):
        assert not h.same(hd.of({**RBD, **other}).key()), other


def test_rbd_snapshot_is_read_only_everywhere(tmp_path: str) -> None:
    raw = {**RBD, "snap": "s1", "uri": "rbd:vvpool/tenant-a/vv-1@s1"}
    h = hd.of(raw)
    assert h.readonly
    root = disk_root()
    dx.set_source(root, "vda", raw)
    src = root.find("devices/disk/source/snapshot")
    assert src is not None and src.get("name") == "s1"
    assert root.find("devices/disk/readonly") is not None
    assert dx.same_source(dx.disk_source(dx.parse(dx.tostring(root)), "vda"), raw)
    assert h.blockdev()["snapshot"] == "s1" and h.blockdev()["read-only"] is True
    h.prepare(HostAccess(None, "h1", str(tmp_path), str(tmp_path)))
    assert "read-only=on" in h.image_args()[-1]
    with pytest.raises(InvalidInput, match="read-only"):
        h.image_args(target=True)
    dx.set_source(root, "vda", dict(RBD))  # a writable binding drops <readonly/>
    assert root.find("devices/disk/readonly") is None


def test_rbd_blockdev_and_qemu_img_arguments(tmp_path: str) -> None:
    raw = dict(RBD)
    h = hd.of(raw)
    with pytest.raises(InvalidInput, match="not on this host"):
        h.image_args()  # no key file before prepare: never a key on the command line
    keys = os.path.join(str(tmp_path), "ceph")
    hd.prepare([raw], HostAccess(None, "h1", str(tmp_path), keys))
    path = os.path.join(keys, "vvhost-h1.key")
    assert raw["key_file"] == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    assert Path(path).read_text() == KEY
    assert h.blockdev() == {
        "driver": "rbd",
        "pool": "vvpool",
        "namespace": "tenant-a",
        "image": "vv-1",
        "user": "vvhost-h1",
        "server": [{"host": "127.0.0.1", "port": "46789"}, {"host": "::1", "port": "46790"}],
        "auth-client-required": ["cephx"],
        "key-secret": "vvrbd-vvhost-h1",
    }
    obj = f"secret,id=vvrbd-vvhost-h1,file={path},format=base64"
    assert h.image_args(target=True) == [
        "--object",
        obj,
        "--target-image-opts",
        "driver=raw,file.driver=rbd,file.pool=vvpool,file.namespace=tenant-a,file.image=vv-1,"
        "file.user=vvhost-h1,file.key-secret=vvrbd-vvhost-h1,"
        "file.server.0.host=127.0.0.1,file.server.0.port=46789,"
        "file.server.1.host=::1,file.server.1.port=46790,file.auth-client-required.0=cephx",
    ]
    assert KEY not in " ".join(h.image_args())
    # two nodes of one identity share one secret object
    other = {**RBD, "image": "vv-2", "key_file": path}
    assert hd.objects([raw, other, dict(NBD_UNIX)]) == ["--object", obj]


def test_rbd_handle_without_monitors_or_user_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no monitor"):
        hd.of({**RBD, "monitors": []}).blockdev()
    with pytest.raises(InvalidInput, match="no user"):
        hd.of({**RBD, "user": None}).blockdev()
    # the endpoint could not reach the cluster when it made the handle: its reason shows
    broken = {**RBD, "key": None, "error": "cannot reach Ceph at mon 127.0.0.1:1"}
    with pytest.raises(InvalidInput, match="has no key: cannot reach Ceph"):
        hd.secrets([broken])


def test_ceph_secret_is_stable_and_holds_the_raw_key() -> None:
    (s,) = hd.secrets([dict(RBD), {**RBD, "image": "vv-2"}, dict(ISCSI)])
    assert isinstance(s, cephsecret.CephSecret)
    assert s.uuid == cephsecret.secret_uuid("vvhost-h1") == str(uuid.UUID(s.uuid))
    assert cephsecret.secret_uuid("vvhost-h2") != s.uuid
    assert s.value() == base64.b64decode(KEY)
    doc = ET.fromstring(s.xml())
    assert doc.get("private") == "yes" and doc.get("ephemeral") == "no"
    assert doc.findtext("uuid") == s.uuid
    usage = doc.find("usage")
    assert usage is not None and usage.get("type") == "ceph"
    assert usage.findtext("name") == "vvhost client.vvhost-h1"
    with pytest.raises(InvalidInput, match="not base64"):
        cephsecret.CephSecret("vvhost-h1", "not base64!").value()


def test_key_file_is_rewritten_only_when_the_key_changes(tmp_path: str) -> None:
    d = os.path.join(str(tmp_path), "k")
    path = cephsecret.write_key(d, "vvhost-h1", KEY)
    before = os.stat(path).st_ino
    assert cephsecret.write_key(d, "vvhost-h1", KEY) == path and os.stat(path).st_ino == before
    new = base64.b64encode(b"another key of 32 bytes, really!").decode()
    cephsecret.write_key(d, "vvhost-h1", new)
    assert Path(path).read_text() == new and os.stat(path).st_ino != before
    with pytest.raises(InvalidInput, match="bad Ceph user"):
        cephsecret.write_key(d, "../etc", KEY)
    cephsecret.drop_key(d, "vvhost-h1")
    cephsecret.drop_key(d, "vvhost-h1")
    assert not os.path.exists(path)


def test_redo_chain_over_rbd_spells_backing_stores() -> None:
    top = {**RBD, "image": "vv-top"}
    root = disk_root()
    dx.set_chain(root, "vda", [top, dict(RBD)])
    chain = dx.chain_sources(dx.parse(dx.tostring(root)), "vda")
    assert chain is not None and [c["name"] for c in chain] == [
        "vvpool/tenant-a/vv-top",
        "vvpool/tenant-a/vv-1",
    ]
    assert dx.same_chain(root, "vda", [top, dict(RBD)])


def test_rbd_in_a_namespace_runs_the_wrapper_emulator() -> None:
    root = disk_root()
    dx.set_source(root, "vda", {**RBD, "namespace": ""})
    assert root.find("devices/emulator") is None  # the default namespace: plain QEMU
    dx.set_source(root, "vda", dict(RBD))
    assert root.findtext("devices/emulator") == qemuwrap.PATH == "/etc/libvirt/hooks/vvhost-qemu"
    dx.set_source(root, "vda", dict(RBD))
    assert len(root.findall("devices/emulator")) == 1
    # nodes libvirt adds over QMP do not pass the wrapper: said before, not found out after
    assert "namespace" in hd.of(dict(RBD)).hotplug_problem()
    assert hd.of({**RBD, "namespace": ""}).hotplug_problem() == ""
    assert not any(hd.of(dict(h)).hotplug_problem() for h in (FILE, ISCSI, NBD_UNIX))


def test_wrapper_makes_libvirts_rbd_namespace_explicit() -> None:
    lib = {"driver": "rbd", "pool": "P", "image": "tenant-a/vv-1", "user": "u", "node-name": "n"}
    other = {"driver": "file", "filename": "/a/b"}
    argv = ["-name", "x", "-blockdev", json.dumps(lib), "-blockdev", json.dumps(other)]
    out = qemuwrap.rewrite(argv)
    assert out[:2] == ["-name", "x"] and out[4:] == argv[4:]
    node = json.loads(out[3])
    assert node == {**lib, "namespace": "tenant-a", "image": "vv-1"}
    assert list(node)[:4] == ["driver", "pool", "namespace", "image"]
    plain = ["-blockdev", json.dumps({"driver": "rbd", "pool": "P", "image": "vv-1"})]
    assert qemuwrap.rewrite(plain) == plain
    assert qemuwrap.rewrite(["-blockdev", "driver=file,filename=/x"]) == [
        "-blockdev",
        "driver=file,filename=/x",
    ]


def test_installed_wrapper_is_a_standalone_script(tmp_path: str) -> None:
    path = qemuwrap.install(str(tmp_path))
    assert path.endswith("/vvhost-qemu") and os.access(path, os.X_OK)
    text = Path(path).read_text()
    assert text.startswith("#!/usr/bin/python3 -I\n") and "import vvhost" not in text
    assert "from vvhost" not in text
