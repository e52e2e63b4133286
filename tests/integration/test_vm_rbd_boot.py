"""A guest boots from an RBD image in a RADOS namespace through libvirt, as the
host's own Ceph identity, with the rbd handle class building everything.

Real components: the private Ceph cluster (session fixture), a private libvirtd
lab host, QEMU TCG with its librbd driver, qemu-img. The image and the host's
identity are made here directly (librbd and ``ceph auth``), as the control plane
does when it binds an rbd vvol::

    pool P ── namespace tenant-a ── image vv-a   (the guest's disk)
           └─ namespace tenant-b ── image vv-b   (another tenant's)
    client.vvhost-kvm1: mon 'profile rbd', osd 'profile rbd pool=P namespace=tenant-a'

    qemu-img (handle.image_args, target)  writes pattern A into vv-a
    libvirt <source protocol='rbd' name='P/tenant-a/vv-a'> + <auth> secret (cephsecret),
      <emulator> the wrapper that hands QEMU the namespace libvirt 9.0 cannot (qemuwrap)
      guest: verify A at 0..4 MiB, write B at 4..6 MiB, power off
    qemu-img (handle.image_args) reads vv-a: A and B where they belong; librbd as
      admin sees the same bytes in tenant-a
    the host's identity cannot open vv-b in tenant-b (qemu-img and a domain both fail)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import rbd

from vvhost.cephlab import CephLab
from vvhost.errors import NotFound
from vvhost.guest import GuestImage, guest_cmdline, parse_serial, pattern_bytes
from vvhost.host import cephsecret, libvirtsecrets, qemuwrap
from vvhost.host import domainxml as dx
from vvhost.host import handles as hd
from vvhost.host.config import HostConfig
from vvhost.host.handles import HostAccess
from vvhost.host.vms import VmError, VmManager, raw_source, raw_target
from vvhost.labhost import LibvirtHost
from vvhost.tools import qemuimg
from vvhost.tools.ceph import rbd_caps

MiB = 1 << 20
SIZE = 32 * MiB
USER = "vvhost-kvm1"
FEATURES = (
    rbd.RBD_FEATURE_LAYERING
    | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
    | rbd.RBD_FEATURE_OBJECT_MAP
    | rbd.RBD_FEATURE_FAST_DIFF
    | rbd.RBD_FEATURE_DEEP_FLATTEN
)


@pytest.fixture
def kvm1(tmp_path: Path) -> Iterator[LibvirtHost]:
    host = LibvirtHost("kvm1", str(tmp_path / "kvm1"))
    try:
        host.start()
        qemuwrap.install(host.hooks_dir)  # as `vvhost hook install` does with the hook
        yield host
    finally:
        host.stop()


def make_image(lab: CephLab, pool: str, namespace: str, name: str) -> None:
    with lab.admin() as ceph, ceph.ioctx(pool) as ioctx:
        if namespace not in rbd.RBD().namespace_list(ioctx):
            rbd.RBD().namespace_create(ioctx, namespace)
        ioctx.set_namespace(namespace)
        rbd.RBD().create(ioctx, name, SIZE, features=FEATURES, old_format=False)


def read_image(lab: CephLab, pool: str, namespace: str, name: str, off: int, n: int) -> bytes:
    with lab.admin() as ceph, ceph.ioctx(pool, namespace) as ioctx, rbd.Image(ioctx, name) as img:
        data: bytes = img.read(off, n)
        return data


def handle_for(lab: CephLab, pool: str, namespace: str, image: str, key: str) -> dict[str, Any]:
    """The handle an rbd endpoint gives host kvm1 (see the rbd handle contract)."""
    _v2, v1 = lab.mon_ports
    return {
        "protocol": "rbd",
        "uri": f"rbd:{pool}/{namespace}/{image}",
        "pool": pool,
        "namespace": namespace,
        "image": image,
        "snap": None,
        "monitors": [f"127.0.0.1:{v1}"],
        "user": USER,
        "key": key,
        "readonly": False,
    }


def domain_xml(tmp: str, guest: GuestImage, handle: dict[str, Any], cmds: list[str]) -> str:
    meta = dx.VmMeta(datastore=None, config=None, disks={"vda": "vv-a"})
    root = dx.new_domain(
        "rbdvm",
        256,
        1,
        meta,
        guest.kernel,
        guest.initrd,
        guest_cmdline(cmds),
        os.path.join(tmp, "rbdvm.serial"),
    )
    dx.set_source(root, "vda", handle)
    return dx.tostring(root)


def qemu_cmdline(host: LibvirtHost, name: str) -> list[str]:
    """The command line of domain ``name``'s running QEMU process."""
    pid = Path(host.path("run", "qemu", f"{name}.pid")).read_text().strip()
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def run_to_end(
    conn: libvirt.virConnect, xml: str, host: LibvirtHost | None = None, timeout: float = 120
) -> list[str]:
    """Define, start and wait for the guest to power off; returns QEMU's command line."""
    dom = conn.defineXML(xml)
    try:
        dom.create()
        argv = qemu_cmdline(host, "rbdvm") if host else []
        deadline = time.monotonic() + timeout
        while dom.isActive():
            assert time.monotonic() < deadline, "the guest did not power off"
            time.sleep(0.2)
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    return argv


def test_guest_boots_from_rbd_namespace_as_the_hosts_identity(
    ceph_cluster: CephLab, ceph_pool: str, kvm1: LibvirtHost, guest: GuestImage, tmp_path: Path
) -> None:
    tmp = str(tmp_path)
    make_image(ceph_cluster, ceph_pool, "tenant-a", "vv-a")
    make_image(ceph_cluster, ceph_pool, "tenant-b", "vv-b")
    with ceph_cluster.admin() as ceph:
        key = ceph.auth_get_or_create(f"client.{USER}", rbd_caps(ceph_pool, ["tenant-a"]))
    try:
        handle = handle_for(ceph_cluster, ceph_pool, "tenant-a", "vv-a", key)
        access = HostAccess(None, "kvm1", os.path.join(tmp, "nbd"), os.path.join(tmp, "ceph"))
        hd.prepare([handle], access)

        # qemu-img writes pattern A through the handle's target arguments
        src = os.path.join(tmp, "a.raw")
        with open(src, "wb") as fh:
            fh.write(pattern_bytes("A", 0, 4))
        qemuimg.convert(["-f", "raw", src], raw_target(handle))
        assert read_image(ceph_cluster, ceph_pool, "tenant-a", "vv-a", 0, 4 * MiB) == (
            pattern_bytes("A", 0, 4)
        )

        # libvirt: the host's Ceph key as a secret, then the guest on the rbd disk
        conn = libvirt.open(kvm1.uri)
        try:
            libvirtsecrets.define_all(conn, hd.secrets([handle]))
            libvirtsecrets.define_all(conn, hd.secrets([handle]))  # idempotent
            cmds = ["verify:vda:A:0:4", "write:vda:B:4:2", "verify:vda:B:4:2"]
            argv = run_to_end(conn, domain_xml(tmp, guest, handle, cmds), kvm1)
            report = parse_serial(Path(tmp, "rbdvm.serial").read_text(errors="replace"))
            assert report.ok, report
            assert all(report.results[c] == "ok" for c in cmds), report
            # QEMU got the namespace (libvirt alone would ask for an image "tenant-a/vv-a")
            # and no key on its command line (libvirt passes the secret encrypted)
            rbd_nodes = [a for a in argv if '"driver":"rbd"' in a]
            assert len(rbd_nodes) == 1, argv
            assert '"namespace":"tenant-a","image":"vv-a"' in rbd_nodes[0]
            assert '"user":"vvhost-kvm1"' in rbd_nodes[0]
            assert not any(key in a for a in argv)

            # qemu-img reads the guest's writes through the handle; admin librbd agrees
            back = os.path.join(tmp, "back.raw")
            qemuimg.convert(raw_source(handle), ["-O", "raw", back], no_create=False)
            data = Path(back).read_bytes()
            assert len(data) == SIZE
            assert data[: 4 * MiB] == pattern_bytes("A", 0, 4)
            assert data[4 * MiB : 6 * MiB] == pattern_bytes("B", 4, 2)
            assert read_image(ceph_cluster, ceph_pool, "tenant-a", "vv-a", 4 * MiB, 2 * MiB) == (
                pattern_bytes("B", 4, 2)
            )

            # hostile: the same identity cannot reach another tenant's namespace
            other = handle_for(ceph_cluster, ceph_pool, "tenant-b", "vv-b", key)
            hd.prepare([other], access)
            with pytest.raises(qemuimg.QemuImgFailed, match="not permitted"):
                qemuimg.convert(raw_source(other), ["-O", "raw", back], no_create=False)
            with pytest.raises(qemuimg.QemuImgFailed, match="not permitted"):
                qemuimg.convert(["-f", "raw", src], raw_target(other))
            assert read_image(ceph_cluster, ceph_pool, "tenant-b", "vv-b", 0, MiB) == bytes(MiB)
            xml = domain_xml(tmp, guest, other, ["verify:vda:A:0:4"])
            with pytest.raises(libvirt.libvirtError, match="Operation not permitted"):
                run_to_end(conn, xml)

            assert cephsecret.remove(conn, USER)
            assert not cephsecret.remove(conn, USER)
        finally:
            conn.close()
    finally:
        with ceph_cluster.admin() as ceph:
            ceph.auth_rm(f"client.{USER}")


class RbdBindings:
    """The three binding calls ``VmManager.start`` makes, answered with the handle
    an rbd endpoint gives (that endpoint is not part of this test): what was
    bound, and how often."""

    def __init__(self, handles: dict[str, dict[str, Any]]) -> None:
        self.handles = handles
        self.bound: set[str] = set()
        self.calls: list[str] = []

    def bindings(self, host: str | None = None, vvol: str | None = None) -> list[dict[str, Any]]:
        return [dict(self.handles[v], vvol=v) for v in sorted(self.bound)]

    def bind(self, vvols: list[str], host: str, pe: str | None = None) -> list[dict[str, Any]]:
        self.calls.append("bind")
        self.bound |= set(vvols)
        return [{"ok": True, "handle": dict(self.handles[v], vvol=v)} for v in vvols]

    def unbind(self, vvols: list[str], host: str, drop_all: bool = False) -> list[dict[str, Any]]:
        self.calls.append("unbind")
        self.bound -= set(vvols)
        return []

    def vvol(self, ref: str) -> dict[str, Any]:
        raise NotFound(kind="vvol", ref=ref)  # no catalog here: `vm show` lists no figures


def test_vm_start_defines_the_hosts_ceph_secret_first(
    ceph_cluster: CephLab, ceph_pool: str, kvm1: LibvirtHost, guest: GuestImage, tmp_path: Path
) -> None:
    """``vvhost vm start`` of a domain on an rbd disk defines the host's secret
    before libvirt starts it (the hook may not), and keeps the binding it made for
    the running VM; a failed start drops it again."""
    tmp = str(tmp_path)
    make_image(ceph_cluster, ceph_pool, "tenant-a", "vv-a")
    with ceph_cluster.admin() as ceph:
        key = ceph.auth_get_or_create(f"client.{USER}", rbd_caps(ceph_pool, ["tenant-a"]))
    try:
        handle = handle_for(ceph_cluster, ceph_pool, "tenant-a", "vv-a", key)
        api = RbdBindings({"vv-a": handle})
        conf = HostConfig(
            name="kvm1",
            libvirt=kvm1.uri,
            nbd_tls_dir=os.path.join(tmp, "nbd"),
            ceph_dir=os.path.join(tmp, "ceph"),
        )
        vms = VmManager(conf, api, kvm1.uri)  # type: ignore[arg-type]
        try:
            cmds = ["write:vda:C:1:2", "verify:vda:C:1:2"]
            vms.conn.defineXML(domain_xml(tmp, guest, handle, cmds))
            with pytest.raises(libvirt.libvirtError):
                vms.conn.secretLookupByUUIDString(cephsecret.secret_uuid(USER))
            vms.start("rbdvm")
            assert vms.conn.secretLookupByUUIDString(cephsecret.secret_uuid(USER))
            assert api.bound == {"vv-a"}  # for the running VM (its release drops it)
            dom = vms.domain("rbdvm")
            deadline = time.monotonic() + 120
            while dom.isActive():
                assert time.monotonic() < deadline, "the guest did not power off"
                time.sleep(0.2)
            report = parse_serial(Path(tmp, "rbdvm.serial").read_text(errors="replace"))
            assert report.ok and all(report.results[c] == "ok" for c in cmds), report
            assert read_image(ceph_cluster, ceph_pool, "tenant-a", "vv-a", MiB, 2 * MiB) == (
                pattern_bytes("C", 1, 2)
            )

            # a start that fails (the identity lost its caps) leaves nothing bound
            api.bound.clear()
            with ceph_cluster.admin() as ceph:
                ceph.auth_caps(f"client.{USER}", rbd_caps(ceph_pool, ["tenant-b"]))
            with pytest.raises(VmError, match="did not start"):
                vms.start("rbdvm")
            assert api.bound == set() and api.calls[-2:] == ["bind", "unbind"]
            dom.undefine()
            assert cephsecret.remove(vms.conn, USER)
        finally:
            vms.close()
    finally:
        with ceph_cluster.admin() as ceph:
            ceph.auth_rm(f"client.{USER}")
