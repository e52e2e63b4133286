"""Endpoints serving RBD images, against a real Ceph cluster, qemu-storage-daemon,
tgtd and QEMU's own librbd driver.

- the ``rbd`` endpoint: a binding hands the host a handle and a Ceph identity
  (``client.vvhost-HOST``) whose caps reach only its bindings' namespaces;
  qemu-img/qemu-io read and write through the handle; another tenant's host
  cannot open, list or write the image; token rotation refuses the old key at
  once; the identity keeps its key with no caps after the last binding and
  goes with the host; audit reports an identity that matches no host
- ``nbd`` and ``iscsi`` serving RBD images (pattern checked; iSCSI in the
  default namespace here, in containers' namespaces in test_iscsi_rbd.py),
  ``file`` refusing RBD

The RBD array is the real backend (one RADOS namespace per storage container).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.iscsiauth import authed
from tests.patterns import CHUNK, Patterns, chunk_bytes
from tests.runner import run
from vvhost.arrays.settings import RbdSettings
from vvhost.arrays.sources import RbdSource
from vvhost.catalog import vvolrepo
from vvhost.daemon import ServerProcess, free_port
from vvhost.errors import InvalidInput, NotFound, VvhostError
from vvhost.pe import Attachment, cephaccess
from vvhost.pe.iscsi import DEFAULT_IQN_PREFIX, IscsiEndpoint, target_name
from vvhost.service import Service
from vvhost.service.context import Config
from vvhost.service.pe_audit import audit_acls

if TYPE_CHECKING:
    from vvhost.cephlab import CephLab

MiB = 1 << 20
SIZE = 8 * MiB
OFFSETS = [0, 3 * MiB, SIZE - CHUNK]
QEMU_IQN = "iqn.2008-11.org.linux-kvm"


@contextmanager
def opened(ceph_lab: CephLab, src: RbdSource) -> Iterator[Any]:
    """The image (or snapshot) of ``src``, opened as the cluster's admin."""
    import rbd

    with ceph_lab.admin() as ceph, ceph.ioctx(src.pool, src.namespace) as ioctx:
        with rbd.Image(ioctx, src.image, snapshot=src.snap) as img:
            yield img


@dataclass
class Lab:
    svc: Service
    ceph: CephLab
    pool: str
    tmp: str
    vvols: dict[str, str]  # name -> id

    def source(self, name: str) -> RbdSource:
        with self.svc.ctx.db.tx() as conn:
            v = vvolrepo.get(conn, self.vvols[name])
        assert v is not None
        src = self.svc.ctx.source(v)
        assert isinstance(src, RbdSource)
        return src

    @contextmanager
    def image(self, name: str) -> Iterator[Any]:
        with opened(self.ceph, self.source(name)) as img:
            yield img

    def write(self, name: str, label: str) -> None:
        with self.image(name) as img:
            for off in OFFSETS:
                img.write(chunk_bytes(label, off), off)
            img.flush()

    def check(self, name: str, label: str) -> None:
        with self.image(name) as img:
            for off in OFFSETS:
                assert img.read(off, CHUNK) == chunk_bytes(label, off), f"{name} at {off}"

    def bind(self, name: str, host: str, pe: str) -> dict[str, Any]:
        [result] = self.svc.bindings.bind([self.vvols[name]], host, pe)
        assert result["ok"], result
        return dict(result["handle"])

    def bind_error(self, name: str, host: str, pe: str) -> str:
        [result] = self.svc.bindings.bind([self.vvols[name]], host, pe)
        assert not result["ok"], result
        return str(result["error"]["message"])


@pytest.fixture
def lab(ceph_cluster: CephLab, ceph_pool: str, tmp_path: str) -> Iterator[Lab]:
    svc = Service(Config(state_dir=os.path.join(tmp_path, "state")))
    svc.start()
    lab_conf = (ceph_cluster.conf, "admin", ceph_cluster.admin_keyring)
    try:
        svc.arrays.add("ceph1", "rbd", RbdSettings(ceph_pool, *lab_conf).to_dict())
        svc.tenants.create("ta")
        svc.tenants.create("tb")
        svc.containers.create("ca", "1G", ["ceph1"], tenant="ta")
        svc.containers.create("ca2", "1G", ["ceph1"], tenant="ta")
        svc.containers.create("cb", "1G", ["ceph1"], tenant="tb")
        svc.containers.create("local", "1G")  # on the default dir array
        vvols = {
            name: svc.vvols.create(container, SIZE, name=name)["id"]
            for name, container in (
                ("va", "ca"), ("va2", "ca2"), ("vb", "cb"), ("vdir", "local")
            )
        }  # fmt: skip
        for host, tenant, iqn in (("ha", "ta", QEMU_IQN), ("hb", "tb", None), ("hx", None, None)):
            svc.hosts.add(host, iqn, tenant)
        svc.pes.create("rbd1", "rbd", array="ceph1")
        yield Lab(svc, ceph_cluster, ceph_pool, str(tmp_path), vvols)
    finally:
        for b in svc.bindings.listing():
            svc.bindings.unbind([b["vvol"]], b["host"], drop_all=True)
        svc.close()  # the hosts' Ceph identities go with the pool (ceph_pool)


# -- reading and writing through a handle, as a host would ------------------------------------
def rbd_spec(handle: dict[str, Any]) -> tuple[list[str], str]:
    """(--object arguments, json: image spec) opening the handle with QEMU's librbd
    driver: the monitors and the key from the handle, nothing from the cluster's files."""
    host, _, port = handle["monitors"][0].rpartition(":")
    spec = {
        "driver": "raw",
        "file": {
            "driver": "rbd",
            "pool": handle["pool"],
            "image": handle["image"],
            "user": handle["user"],
            "server": [{"host": host, "port": port}],
            "key-secret": "sec0",
            "auth-client-required": ["cephx"],
            **({"namespace": handle["namespace"]} if handle["namespace"] else {}),
            **({"snapshot": handle["snap"]} if handle["snap"] else {}),
        },
    }
    secret = f"secret,id=sec0,data={handle['key']},format=base64"
    return ["--object", secret], "json:" + json.dumps(spec)


def read_all(handle: dict[str, Any], out: str, ok: bool = True) -> Any:
    objects, spec = rbd_spec(handle)
    return run("qemu-img", "convert", *objects, "-O", "raw", spec, out, ok=ok)


def qemu_io(handle: dict[str, Any], command: str, ok: bool = True) -> Any:
    objects, spec = rbd_spec(handle)
    return run("qemu-io", *objects, "-c", command, spec, ok=ok)


def check_file(path: str, label: str, offsets: list[int] = OFFSETS) -> None:
    Patterns().check(path, label, offsets)


def open_as(lab: Lab, user: str, key: str, name: str) -> str:
    """Try to open vvol ``name``'s image as ``client.<user>`` with ``key`` (read,
    write 512 bytes at 0, list the namespace); "ok", "denied" when the cluster
    refused, else the class of the error."""
    import rados
    import rbd

    src = lab.source(name)
    conf = {"key": key, "mon_host": lab.ceph.mon_host, "client_mount_timeout": "5",
            "rados_mon_op_timeout": "5", "rados_osd_op_timeout": "5"}  # fmt: skip

    def why(exc: Exception) -> str:
        name = type(exc).__name__
        return "denied" if name in ("PermissionError", "PermissionDeniedError") else name

    minimal = os.path.join(lab.tmp, "client.conf")  # no cluster files: the monitors only
    with open(minimal, "w", encoding="ascii") as fh:
        fh.write(f"[global]\nmon_host = {lab.ceph.mon_host}\n")
    handle = rados.Rados(conffile=minimal, rados_id=user, conf=conf)
    try:
        handle.connect(timeout=5)
    except rados.Error as exc:
        return why(exc)
    try:
        with handle.open_ioctx(src.pool) as ioctx:
            ioctx.set_namespace(src.namespace)
            try:
                with rbd.Image(ioctx, src.image) as img:
                    img.read(0, 4096)
                    img.write(b"x" * 512, 0)
            except (rbd.Error, rados.Error) as exc:
                return why(exc)
            try:
                rbd.RBD().list(ioctx)
            except (rbd.Error, rados.Error) as exc:
                return "list:" + why(exc)
    finally:
        handle.shutdown()
    return "ok"


# -- the rbd endpoint --------------------------------------------------------------------------
def test_rbd_handle_reads_and_writes_through_librbd(lab: Lab) -> None:
    lab.write("va", "a1")
    handle = lab.bind("va", "ha", "rbd1")
    src = lab.source("va")
    assert handle["protocol"] == "rbd"
    assert handle["uri"] == f"rbd:{src.pool}/{src.namespace}/{src.image}"
    assert (handle["pool"], handle["namespace"], handle["image"], handle["snap"]) == (
        src.pool, src.namespace, src.image, None)  # fmt: skip
    assert handle["user"] == "vvhost-ha" and handle["key"] and not handle["readonly"]
    assert handle["monitors"] and all(":" in m for m in handle["monitors"])
    with lab.ceph.admin() as ceph:
        caps = ceph.auth_caps_of("client.vvhost-ha")
    assert caps == {
        "mon": "profile rbd",
        "osd": f"profile rbd pool={src.pool} namespace={src.namespace}",
    }

    out = os.path.join(lab.tmp, "va.raw")
    read_all(handle, out)
    check_file(out, "a1")
    qemu_io(handle, f"write -P 0x5a {MiB} {CHUNK}")
    with lab.image("va") as img:
        assert img.read(MiB, CHUNK) == b"\x5a" * CHUNK
    lab.check("va", "a1")

    # a second binding of the host in another container's namespace widens the caps
    # only by that namespace; unbinding it narrows them again
    handle2 = lab.bind("va2", "ha", "rbd1")
    ns2 = lab.source("va2").namespace
    assert handle2["key"] == handle["key"] and handle2["namespace"] == ns2 != src.namespace
    with lab.ceph.admin() as ceph:
        osd = ceph.auth_caps_of("client.vvhost-ha")["osd"]
    assert osd == ", ".join(
        f"profile rbd pool={src.pool} namespace={ns}" for ns in sorted([ns2, src.namespace])
    )
    lab.svc.bindings.unbind([lab.vvols["va2"]], "ha")
    with lab.ceph.admin() as ceph:
        osd = ceph.auth_caps_of("client.vvhost-ha")["osd"]
    assert osd == f"profile rbd pool={src.pool} namespace={src.namespace}"


def test_linked_clone_in_another_container_reads_its_parent(lab: Lab) -> None:
    """A linked clone in container ca2 of a snapshot in ca reads its unwritten
    ranges from the parent image in ca's namespace, with the host's own key: the
    caps name both namespaces, and no more."""
    lab.write("va", "p1")
    snap = lab.svc.cow.snapshot(lab.vvols["va"], name="va@s1")["id"]
    lab.write("va", "p2")  # the snapshot keeps p1
    clone = lab.svc.cow.clone(snap, linked=True, container="ca2", name="vc")["id"]
    lab.vvols["vc"] = clone
    src, parent_ns = lab.source("vc"), lab.source("va").namespace
    assert src.namespace == lab.source("va2").namespace != parent_ns
    handle = lab.bind("vc", "ha", "rbd1")
    with lab.ceph.admin() as ceph:
        osd = ceph.auth_caps_of("client.vvhost-ha")["osd"]
    assert osd == ", ".join(
        f"profile rbd pool={src.pool} namespace={ns}" for ns in sorted([parent_ns, src.namespace])
    )
    out = os.path.join(lab.tmp, "vc.raw")
    read_all(handle, out)
    check_file(out, "p1")


def test_another_tenants_host_cannot_reach_the_image(lab: Lab) -> None:
    lab.write("va", "mine")
    ha = lab.bind("va", "ha", "rbd1")
    hb = lab.bind("vb", "hb", "rbd1")
    assert ha["key"] != hb["key"]
    # host B's identity, aimed at host A's image in tenant A's namespace
    stolen = dict(ha, user=hb["user"], key=hb["key"])
    assert read_all(stolen, os.path.join(lab.tmp, "x.raw"), ok=False).returncode != 0
    assert open_as(lab, "vvhost-hb", hb["key"], "va") == "denied"
    assert open_as(lab, "vvhost-ha", ha["key"], "vb") == "denied"
    assert open_as(lab, "vvhost-ha", ha["key"], "va") == "ok"
    with lab.image("va") as img:
        assert img.read(0, 512) == b"x" * 512
        assert img.read(3 * MiB, CHUNK) == chunk_bytes("mine", 3 * MiB)
    # the control plane refuses to hand host A another tenant's vvol at all
    assert "belongs to tenant ta" in lab.bind_error("vb", "ha", "rbd1")
    # and an rbd endpoint serves only its own array
    refused = lab.bind_error("vdir", "ha", "rbd1")
    assert refused == "endpoint rbd1 serves array ceph1 only; vvol vdir is on array local"


def test_token_rotation_refuses_the_old_key_at_once(lab: Lab) -> None:
    lab.write("va", "r1")
    old = lab.bind("va", "ha", "rbd1")
    assert open_as(lab, "vvhost-ha", old["key"], "va") == "ok"
    lab.svc.hosts.rotate_token("ha")
    assert open_as(lab, "vvhost-ha", old["key"], "va") == "denied"
    [new] = [b for b in lab.svc.bindings.listing(host="ha")]
    assert new["key"] and new["key"] != old["key"]
    out = os.path.join(lab.tmp, "r1.raw")
    read_all(new, out)
    check_file(out, "r1", OFFSETS[1:])  # open_as wrote 512 bytes at 0


def test_unreachable_cluster_changes_nothing(lab: Lab) -> None:
    """Rotating the token of a host with a Ceph identity on a cluster that does not
    answer fails in one error and changes nothing: the old token still works and
    the key is the same (a new token never hides a key left valid)."""
    handle = lab.bind("va", "ha", "rbd1")
    token = lab.svc.hosts.rotate_token("ha")["token"]
    key = ceph_key(lab, "ha")
    assert key and key != handle["key"]
    record = os.path.join(lab.tmp, "state", "pe", "rbd1", "cluster.json")
    with open(record, encoding="utf-8") as fh:
        saved = fh.read()
    dead = os.path.join(lab.tmp, "dead.conf")
    with open(dead, "w", encoding="ascii") as fh:
        fh.write(f"[global]\nmon_host = 127.0.0.1:{free_port()}\n")
    with open(record, "w", encoding="utf-8") as fh:
        json.dump(dict(json.loads(saved), conf=dead), fh)
    try:
        with pytest.raises(VvhostError, match="ceph cluster"):
            lab.svc.hosts.rotate_token("ha")
        assert lab.svc.tenants.authenticate(token).name == "ha"
    finally:
        with open(record, "w", encoding="utf-8") as fh:
            fh.write(saved)
    assert ceph_key(lab, "ha") == key


def ceph_key(lab: Lab, host: str) -> str | None:
    with lab.ceph.admin() as ceph:
        try:
            return str(ceph.auth_get_key(f"client.vvhost-{host}"))
        except NotFound:
            return None


def ceph_caps(lab: Lab, host: str) -> dict[str, str]:
    with lab.ceph.admin() as ceph:
        return dict(ceph.auth_caps_of(f"client.vvhost-{host}"))


def test_identity_keeps_its_key_without_caps_until_the_host_goes(lab: Lab) -> None:
    def key(host: str) -> str | None:
        return ceph_key(lab, host)

    lab.write("va", "k1")
    lab.bind("va", "ha", "rbd1")
    with lab.ceph.admin() as ceph:  # lost behind the catalog's back (a crash, a slip)
        ceph.auth_rm("client.vvhost-ha")
    lab.svc.endpoints.rbd.sync_all()  # what a control plane start does
    [h1] = lab.svc.bindings.listing(host="ha")
    assert h1["key"] and key("ha") == h1["key"]
    lab.bind("va", "ha", "rbd1")  # refcount 2
    lab.svc.bindings.unbind([lab.vvols["va"]], "ha")
    assert key("ha") == h1["key"]  # one reference left
    lab.svc.bindings.unbind([lab.vvols["va"]], "ha")
    # the last binding went: same key, no caps at all, and the key reads nothing
    assert key("ha") == h1["key"] and ceph_caps(lab, "ha") == {}
    assert open_as(lab, "vvhost-ha", h1["key"], "va") == "denied"
    lab.check("va", "k1")  # nothing was written through it
    # the next binding hands out the same key again, with the caps it needs
    again = lab.bind("va", "ha", "rbd1")
    assert again["key"] == h1["key"] and ceph_caps(lab, "ha")["osd"]
    assert open_as(lab, "vvhost-ha", h1["key"], "va") == "ok"

    h2 = lab.bind("va2", "hx", "rbd1")  # a host of no tenant
    assert key("hx") == h2["key"]
    lab.svc.bindings.unbind([lab.vvols["va2"]], "hx", drop_all=True)
    assert key("hx") == h2["key"] and ceph_caps(lab, "hx") == {}
    assert open_as(lab, "vvhost-hx", h2["key"], "va2") == "denied"
    assert not any("vvhost-hx" in p for p in audit_acls(lab.svc.ctx, lab.svc.endpoints))
    # caps the catalog does not account for (a crash, a slip) are reported ...
    with lab.ceph.admin() as ceph:
        ceph.auth_caps("client.vvhost-hx", cephaccess.caps_for({lab.pool: {""}}))
    problems = audit_acls(lab.svc.ctx, lab.svc.endpoints)  # what `vvhost audit` adds
    assert any("identity client.vvhost-hx has caps" in p for p in problems), problems
    # ... and the identity goes with its host
    lab.svc.hosts.remove("hx")
    assert key("hx") is None

    # one no host matches is reported by audit
    with lab.ceph.admin() as ceph:
        ceph.auth_get_or_create("client.vvhost-ghost", {"mon": "profile rbd"})
    problems = audit_acls(lab.svc.ctx, lab.svc.endpoints)
    assert any("identity client.vvhost-ghost matches no host" in p for p in problems), problems
    assert not any("vvhost-ha" in p or "vvhost-hx" in p for p in problems), problems


# -- the other endpoints serving RBD -----------------------------------------------------------
def test_nbd_serves_an_rbd_image_in_a_namespace(lab: Lab) -> None:
    lab.write("va", "n1")
    lab.svc.pes.create("nbd1", "nbd")
    handle = lab.bind("va", "ha", "nbd1")
    out = os.path.join(lab.tmp, "n1.raw")
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", authed(handle), out)
    check_file(out, "n1")
    run("qemu-io", "-f", "raw", "-c", f"write -P 0x3c {2 * MiB} {CHUNK}", authed(handle))
    with lab.image("va") as img:
        assert img.read(2 * MiB, CHUNK) == b"\x3c" * CHUNK
    # the vvol grows: the export shows the size the catalog has (nothing stats the image)
    assert lab.svc.vvols.extend(lab.vvols["va"], SIZE * 2)["size"] == SIZE * 2
    info = json.loads(run("qemu-img", "info", "--output=json", authed(handle)).stdout)
    assert info["virtual-size"] == SIZE * 2
    lab.svc.bindings.unbind([lab.vvols["va"]], "ha")
    with lab.svc.ctx.db.tx() as conn:
        pe = lab.svc.pes.get(conn, "nbd1")
    assert lab.svc.endpoints.get(pe).present() == set()


def test_rebind_between_nbd_and_rbd_moves_the_access(lab: Lab) -> None:
    lab.write("va", "m1")
    lab.svc.pes.create("nbd1", "nbd")
    lab.bind("va", "ha", "nbd1")
    assert ceph_key(lab, "ha") is None  # nbd needs no Ceph identity
    moved = lab.svc.bindings.rebind(lab.vvols["va"], "ha", "rbd1")
    assert moved["protocol"] == "rbd" and moved["key"] == ceph_key(lab, "ha")
    out = os.path.join(lab.tmp, "m1.raw")
    read_all(moved, out)
    check_file(out, "m1")
    back = lab.svc.bindings.rebind(lab.vvols["va"], "ha", "nbd1")
    assert back["protocol"] == "nbd" and ceph_key(lab, "ha") == moved["key"]
    assert ceph_caps(lab, "ha") == {}  # kept, but reaching nothing
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", authed(back), out)
    check_file(out, "m1")


def test_iscsi_serves_an_rbd_image_in_the_default_namespace(lab: Lab) -> None:
    """The RBD array keeps every container in a namespace of its own, so the
    endpoint is shown an image in the pool's default namespace directly; a
    vvol in a container's namespace is bound too (more in test_iscsi_rbd.py)."""
    import rbd

    with lab.ceph.admin() as ceph, ceph.ioctx(lab.pool) as ioctx:
        rbd.RBD().create(ioctx, "flat", SIZE, old_format=False)
    conf, keyring = lab.ceph.conf, lab.ceph.admin_keyring
    src = RbdSource(lab.pool, "", "flat", None, conf, "admin", keyring)
    with opened(lab.ceph, src) as img:
        for off in OFFSETS:
            img.write(chunk_bytes("i1", off), off)
    lab.svc.pes.create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
    with lab.svc.ctx.db.tx() as conn:
        ep = lab.svc.endpoints.get(lab.svc.pes.get(conn, "iscsi1"))
    assert isinstance(ep, IscsiEndpoint)
    a = Attachment(
        key="1/1", secondary_id="1", source=src, size=SIZE, readonly=False, vvol="flat",
        tid=1, target_iqn=target_name(DEFAULT_IQN_PREFIX, "iscsi1", "ha"), initiator=QEMU_IQN,
        host="ha",
    )  # fmt: skip
    ep.attach(a)
    try:
        assert ep.present() == {"1/1"} and ep.stale([a]) == []
        uri = ep.handle(a)["uri"]
        out = os.path.join(lab.tmp, "i1.raw")
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
        check_file(out, "i1")
        run("qemu-io", "-f", "raw", "-c", f"write -P 0x7e {MiB} {CHUNK}", uri)
        with opened(lab.ceph, src) as img:
            assert img.read(MiB, CHUNK) == b"\x7e" * CHUNK
    finally:
        ep.detach(a.key)
        ep.drop_target(1)
    lab.write("va", "i2")
    out = os.path.join(lab.tmp, "i2.raw")
    bound = lab.bind("va", "ha", "iscsi1")
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", authed(bound), out)
    check_file(out, "i2")


def test_file_endpoint_refuses_rbd(lab: Lab) -> None:
    lab.svc.pes.create("file1", "file", path=os.path.join(lab.tmp, "nfs"))
    message = lab.bind_error("va", "ha", "file1")
    assert message.startswith("file endpoint file1 serves files only, not rbd data")
    assert os.listdir(os.path.join(lab.tmp, "nfs")) == []


def test_rbd_endpoint_needs_an_rbd_array(lab: Lab) -> None:
    with pytest.raises(InvalidInput, match="needs --array"):
        lab.svc.pes.create("rbd2", "rbd")
    with pytest.raises(InvalidInput, match="serves RBD arrays only"):
        lab.svc.pes.create("rbd2", "rbd", array="local")


def test_pe_create_rbd_errors_through_the_cli(tmp_path: str) -> None:
    """Bad input to ``vvhost pe create --protocol rbd``: one line on stderr, a stable
    exit code, no endpoint left behind."""
    server = ServerProcess(
        os.path.join(tmp_path, "state"), os.path.join(tmp_path, "s.sock")
    ).start()

    def cli(*args: str) -> Any:
        return run(sys.executable, "-m", "vvhost", "--socket", server.socket, *args, ok=False)

    try:
        for args, text in (
            ([], "an rbd endpoint needs --array (an RBD array)"),
            (["--array", "local"], "array local is a dir array; an rbd endpoint serves RBD"),
            (["--array", "nowhere"], "nowhere"),
            (["--array", "local", "--portal", "127.0.0.1:1"], "rbd endpoint has no portal"),
        ):  # fmt: skip
            out = cli("pe", "create", "r1", "--protocol", "rbd", *args)
            assert out.returncode != 0 and text in out.stderr, out.stderr
            assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
        listed = json.loads(cli("pe", "list", "--json").stdout)
        assert listed == []
    finally:
        server.stop()


def test_rbd_endpoint_through_the_cli(ceph_cluster: CephLab, ceph_pool: str, tmp_path: str) -> None:
    """The whole path as an operator types it: an RBD array, an rbd endpoint, a
    bind that prints the handle's URI, the host's key in ``binding list``, the
    data read through it with QEMU, the identity without caps after unbind and
    gone with the host."""
    server = ServerProcess(
        os.path.join(tmp_path, "state"), os.path.join(tmp_path, "s.sock")
    ).start()

    def cli(*args: str) -> Any:
        return run(sys.executable, "-m", "vvhost", "--socket", server.socket, *args)

    try:
        cli("array", "add", "ceph1", "--backend", "rbd", "--pool", ceph_pool,
            "--conf", ceph_cluster.conf, "--keyring", ceph_cluster.admin_keyring)  # fmt: skip
        cli("tenant", "create", "ta")
        cli("container", "create", "ca", "--capacity", "1G", "--array", "ceph1", "--tenant", "ta")
        cli("host", "add", "ha", "--tenant", "ta")
        vid = cli("vvol", "create", "--container", "ca", "--size", "8M", "--name", "va").stdout
        cli("pe", "create", "rbd1", "--protocol", "rbd", "--array", "ceph1")
        line = cli("vvol", "bind", "va", "--host", "ha", "--pe", "rbd1").stdout.strip()
        [handle] = json.loads(cli("binding", "list", "--host", "ha", "--json").stdout)
        assert handle["vvol"] == vid.strip() and handle["key"] and handle["user"] == "vvhost-ha"
        assert line == f"va\t{handle['uri']}" and handle["uri"].startswith(f"rbd:{ceph_pool}/")
        src = RbdSource(handle["pool"], handle["namespace"], handle["image"],
                        conf=ceph_cluster.conf, keyring=ceph_cluster.admin_keyring)  # fmt: skip
        with opened(ceph_cluster, src) as img:
            for off in OFFSETS:
                img.write(chunk_bytes("cli", off), off)
        out = os.path.join(tmp_path, "cli.raw")
        read_all(handle, out)
        check_file(out, "cli")
        # a crash of the control plane: the binding, its handle and its key survive it
        server.kill()
        server = ServerProcess(server.state_dir, server.socket).start()
        [again] = json.loads(cli("binding", "list", "--host", "ha", "--json").stdout)
        assert (again["uri"], again["key"]) == (handle["uri"], handle["key"])
        assert json.loads(cli("pe", "show", "rbd1", "--json").stdout)["alive"] is True
        audit = json.loads(cli("audit", "--json").stdout)
        assert not [p for p in audit["problems"] if "vvhost-" in p], audit["problems"]
        cli("vvol", "unbind", "va", "--host", "ha")
        with ceph_cluster.admin() as ceph:
            assert ceph.auth_caps_of("client.vvhost-ha") == {}  # kept, reaching nothing
        cli("host", "remove", "ha")
        with ceph_cluster.admin() as ceph:
            assert "client.vvhost-ha" not in ceph.auth_ls()
    finally:
        server.stop()
