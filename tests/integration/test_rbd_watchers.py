"""Who has an RBD vvol open, and the Ceph identity a host keeps, against a real
Ceph cluster (and qemu-storage-daemon for the nbd endpoint).

- ``vvhost vvol delete`` of an image a host still has open (its binding gone,
  its client not): one line naming the host (the monitors know which Ceph
  identity the watcher logged in as), exit non-zero, nothing deleted, the
  pattern intact; once the host lets go, the delete goes through
- the control plane's own nbd or iscsi daemon holding the image (the catalog
  lost the binding, a crash): the refusal names the endpoint
- the array itself: ``openers``, and ``remove`` / ``relocate`` refusing with
  the watcher's Ceph identity
- a host's identity keeps its key after its last rbd binding, with no caps (the
  key opens nothing); ``token-rotate`` makes it anew (the old key fails, the
  next binding hands out the new one); ``host remove`` deletes it
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.test_rbd_endpoint import (  # noqa: F401 - the fixture
    OFFSETS,
    Lab,
    ceph_caps,
    ceph_key,
    lab,
    open_as,
    read_all,
)
from tests.iscsiauth import authed
from tests.patterns import CHUNK, Patterns, chunk_bytes
from tests.runner import run
from vvhost.arrays.rbdarray import RbdArray
from vvhost.arrays.settings import RbdSettings
from vvhost.arrays.sources import RbdSource
from vvhost.catalog import bindrepo
from vvhost.daemon import ServerProcess, free_port
from vvhost.errors import InUse
from vvhost.pe import cephaccess
from vvhost.service.endpoints import attachment_key

if TYPE_CHECKING:
    from vvhost.cephlab import CephLab


@contextmanager
def held_open(ceph: CephLab, user: str, key: str, src: RbdSource) -> Iterator[Any]:
    """The image of ``src`` opened writable by a second librados client logged in
    as ``client.<user>`` with ``key``: what a host's QEMU does."""
    import rados
    import rbd

    conf = {"key": key, "client_mount_timeout": "5", "rados_mon_op_timeout": "5",
            "rados_osd_op_timeout": "5"}  # fmt: skip
    handle = rados.Rados(conffile=ceph.conf, rados_id=user, conf=conf)
    handle.connect(timeout=5)
    try:
        with handle.open_ioctx(src.pool) as ioctx:
            ioctx.set_namespace(src.namespace)
            with rbd.Image(ioctx, src.image) as img:
                yield img
    finally:
        handle.shutdown()


def watchers(ceph: CephLab, src: RbdSource) -> list[int]:
    import rbd

    with ceph.admin() as admin, admin.ioctx(src.pool, src.namespace) as ioctx:
        with rbd.Image(ioctx, src.image, read_only=True) as img:
            return [int(w["id"]) for w in img.watchers_list()]


def test_delete_of_an_image_a_host_has_open_names_the_host(
    ceph_cluster: CephLab, ceph_pool: str, tmp_path: str
) -> None:
    server = ServerProcess(
        os.path.join(tmp_path, "state"), os.path.join(tmp_path, "s.sock")
    ).start()

    def cli(*args: str, ok: bool = True) -> Any:
        return run(sys.executable, "-m", "vvhost", "--socket", server.socket, *args, ok=ok)

    try:
        cli("array", "add", "ceph1", "--backend", "rbd", "--pool", ceph_pool,
            "--conf", ceph_cluster.conf, "--keyring", ceph_cluster.admin_keyring)  # fmt: skip
        cli("tenant", "create", "ta")
        cli("container", "create", "ca", "--capacity", "1G", "--array", "ceph1", "--tenant", "ta")
        cli("host", "add", "ha", "--tenant", "ta")
        vid = cli("vvol", "create", "--container", "ca", "--size", "8M", "--name", "va").stdout
        cli("pe", "create", "rbd1", "--protocol", "rbd", "--array", "ceph1")
        cli("vvol", "bind", "va", "--host", "ha", "--pe", "rbd1")
        [handle] = json.loads(cli("binding", "list", "--host", "ha", "--json").stdout)
        src = RbdSource(handle["pool"], handle["namespace"], handle["image"])
        with held_open(ceph_cluster, handle["user"], handle["key"], src) as img:
            for off in OFFSETS:
                img.write(chunk_bytes("w1", off), off)
            img.flush()
            # the binding goes, the host's client stays (a VM nobody stopped)
            cli("vvol", "unbind", "va", "--host", "ha")
            assert watchers(ceph_cluster, src), "the host's client still watches the image"
            out = cli("vvol", "delete", "va", ok=False)
            assert out.returncode != 0
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
            assert "host ha" in lines[0] and "client.vvhost-ha" in lines[0], lines[0]
            shown = json.loads(cli("vvol", "show", "va", "--json").stdout)
            assert shown["id"] == vid.strip() and shown["state"] == "ready", shown
            for off in OFFSETS:  # nothing deleted, nothing lost
                assert img.read(off, CHUNK) == chunk_bytes("w1", off)
        assert watchers(ceph_cluster, src) == []
        cli("vvol", "delete", "va")
        assert json.loads(cli("vvol", "list", "--json").stdout) == []
        assert json.loads(cli("audit", "--json").stdout)["ok"]
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", ["nbd", "iscsi"])
def test_delete_names_the_endpoint_whose_daemon_holds_the_image(
    lab: Lab,  # noqa: F811
    protocol: str,
) -> None:
    lab.write("va", "e1")
    portal = {"portal": f"127.0.0.1:{free_port()}"} if protocol == "iscsi" else {}
    lab.svc.pes.create("pe1", protocol, **portal)
    handle = lab.bind("va", "ha", "pe1")
    with lab.svc.ctx.db.tx() as conn:  # the catalog lost the binding (a crash)
        [b] = bindrepo.find_bindings(conn, vvol=lab.vvols["va"])
        bindrepo.delete_binding(conn, b)
        pe = lab.svc.pes.get(conn, "pe1")
    with pytest.raises(InUse) as err:
        lab.svc.vvols.delete(lab.vvols["va"])
    assert "open by endpoint pe1 (client.admin at " in str(err.value), str(err.value)
    out = os.path.join(lab.tmp, "e1.raw")  # still served, still whole
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", authed(handle), out)
    Patterns().check(out, "e1", OFFSETS)
    lab.svc.endpoints.get(pe).detach(attachment_key(b))
    lab.svc.vvols.delete(lab.vvols["va"])
    assert "va" not in {v["name"] for v in lab.svc.vvols.listing()}


def test_token_rotation_after_the_last_binding_makes_the_key_anew(lab: Lab) -> None:  # noqa: F811
    lab.write("va", "t1")
    first = lab.bind("va", "ha", "rbd1")
    lab.svc.bindings.unbind([lab.vvols["va"]], "ha", drop_all=True)
    assert ceph_key(lab, "ha") == first["key"] and ceph_caps(lab, "ha") == {}
    assert open_as(lab, "vvhost-ha", first["key"], "va") == "denied"
    lab.svc.hosts.rotate_token("ha")
    new_key = ceph_key(lab, "ha")
    assert new_key and new_key != first["key"] and ceph_caps(lab, "ha") == {}
    assert open_as(lab, "vvhost-ha", first["key"], "va") == "denied"
    assert open_as(lab, "vvhost-ha", new_key, "va") == "denied"  # no caps yet
    again = lab.bind("va", "ha", "rbd1")
    assert again["key"] == new_key
    out = os.path.join(lab.tmp, "t1.raw")
    read_all(again, out)
    Patterns().check(out, "t1", OFFSETS)
    assert open_as(lab, "vvhost-ha", first["key"], "va") == "denied"  # never again
    lab.svc.bindings.unbind([lab.vvols["va"]], "ha", drop_all=True)
    lab.svc.hosts.remove("ha")
    assert ceph_key(lab, "ha") is None


def test_the_array_names_a_watcher_by_its_ceph_identity(
    ceph_cluster: CephLab, ceph_pool: str
) -> None:
    """The backend itself: ``openers`` and the refusals of ``remove`` and
    ``relocate`` carry the identity the monitors report for the watcher."""
    settings = RbdSettings(ceph_pool, ceph_cluster.conf, "admin", ceph_cluster.admin_keyring)
    array = RbdArray("r1", settings, "array-1")
    array.claim()
    try:
        array.create("v1", 8 << 20, "a")
        src = array.source("v1")
        assert array.openers("v1") == []
        with ceph_cluster.admin() as ceph:
            key = ceph.auth_get_or_create(
                "client.vvhost-kvm9", cephaccess.caps_for({ceph_pool: {src.namespace}})
            )
        try:
            with held_open(ceph_cluster, "vvhost-kvm9", key, src) as img:
                img.write(chunk_bytes("h", 0), 0)
                [who] = array.openers("v1")
                assert who.entity == "client.vvhost-kvm9" and who.client.startswith("client.")
                with pytest.raises(InUse, match="open by client.vvhost-kvm9 at "):
                    array.remove("v1")
                with pytest.raises(InUse, match="open by client.vvhost-kvm9 at "):
                    array.relocate(["v1"], "b")
                assert array.exists("v1") and array.locator("v1")["namespace"] == src.namespace
            assert array.openers("v1") == []
            with array.open("v1") as vol:
                assert vol.read(0, CHUNK) == chunk_bytes("h", 0)
            array.remove("v1")
            assert not array.exists("v1")
        finally:
            with ceph_cluster.admin() as ceph:
                ceph.auth_rm("client.vvhost-kvm9")
    finally:
        array.close()
