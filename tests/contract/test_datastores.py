"""Datastores: NAA-form ids, spanning containers on several arrays, placement,
accounting and what a host learns from ``resolve``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from vvhost.cephlab import CephLab
from vvhost.client import Client
from vvhost.errors import CapacityExceeded, HasDependants, InvalidInput, NotFound
from vvhost.naa import check_naa, is_naa, make_naa
from vvhost.service import Service

MiB = 1 << 20


def test_ids_have_naa_form_and_are_never_reused(service: Service) -> None:
    with service.ctx.db.tx() as conn:
        ids = [service.datastores.new_id(conn) for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    assert all(is_naa(i) and i.startswith("naa.60c7a5e") and len(i) == 36 for i in ids)
    prefix = {i[:20] for i in ids}  # naa.6 + OUI + installation part: one per catalog
    assert len(prefix) == 1
    service.containers.create("pool", "1G")
    first = service.datastores.create("d", "1M")["id"]
    service.datastores.delete("d")
    again = service.datastores.create("d", "1M")["id"]
    assert again != first and int(again[-16:], 16) == int(first[-16:], 16) + 1


@pytest.mark.parametrize(
    "bad",
    [
        "naa.5" + "0" * 31,
        "naa.6" + "0" * 30,
        "naa.6" + "0" * 32,
        "NAA.6" + "0" * 31,
        "naa.6" + "G" * 31,
        "naa.6" + "A" * 31,
        "eui.6" + "0" * 31,
        "",
        "naa.6",
        "naa.6" + "0" * 31 + "\n",
    ],
)
def test_malformed_ids_are_refused(bad: str) -> None:
    assert not is_naa(bad)
    with pytest.raises(InvalidInput):
        check_naa(bad)
    with pytest.raises(InvalidInput):
        make_naa("zz", 1, 1)


def test_datastore_spans_two_arrays(api: Client, plane_dir: str) -> None:
    api.array_add("a1", "dir", os.path.join(plane_dir, "a1"))
    api.array_add("a2", "dir", os.path.join(plane_dir, "a2"))
    api.container_create("c1", "1G", arrays=["a1"])
    api.container_create("c2", "1G", arrays=["a2"])
    api.pe_create("only-a2", "file", path=os.path.join(plane_dir, "nfs2"), array="a2")
    api.pe_create("any", "file", path=os.path.join(plane_dir, "nfs"))
    api.host_add("kvm1")
    with pytest.raises(CapacityExceeded):
        api.datastore_create("huge", "3G")  # no containers can hold it: nothing is made
    assert api.datastores() == []
    ds = api.datastore_create("gold", "1536M")
    assert is_naa(ds["id"]) and sorted(ds["container_names"]) == ["c1", "c2"]
    assert sorted(ds["arrays"]) == ["a1", "a2"]
    made = [api.vvol_create(None, "512M", datastore="gold") for _ in range(3)]
    # free space first: the three land 1/2 across the two containers
    assert sorted(v["container"] for v in made) in (["c1", "c1", "c2"], ["c1", "c2", "c2"])
    assert all(v["datastore"] == ds["id"] for v in made)
    shown = api.datastore("gold")
    assert (shown["provisioned"], shown["free"], shown["vvols"]) == (1536 * MiB, 0, 3)
    assert sum(c["provisioned"] for c in api.containers()) == 1536 * MiB
    with pytest.raises(CapacityExceeded):
        api.vvol_create(None, "1M", datastore="gold")
    # a snapshot counts its unique bytes (against the datastore too): none were written
    snap = api.vvol_snapshot(made[0]["id"])
    assert snap["charge"] == 0 and api.datastore("gold")["free"] == 0
    api.vvol_delete(snap["id"])
    explicit = api.datastore_extend("gold", "1600M")
    assert explicit["capacity"] == 1600 * MiB
    one = api.vvol_create("c2", "16M", datastore="gold")
    assert one["container"] == "c2"
    api.container_create("c3", "1G")
    with pytest.raises(InvalidInput):
        api.vvol_create("c3", "1M", datastore="gold")  # c3 is not part of gold
    resolved = api.datastore_resolve(ds["id"], host="kvm1")
    assert {a["name"] for a in resolved["arrays"]} == {"a1", "a2"}
    assert {p["name"] for p in resolved["pes"]} == {"only-a2", "any"}
    assert len(resolved["containers"]) == 2
    with pytest.raises(HasDependants):
        api.datastore_delete("gold")
    with pytest.raises(NotFound):
        api.datastore_resolve("naa.6" + "f" * 31, host="kvm1")
    assert api.audit()["ok"]


def test_tenant_datastores_resolve_only_for_their_hosts(api: Client) -> None:
    api.tenant_create("t1")
    api.host_add("h-t1", tenant="t1")
    api.host_add("h-none")
    api.container_create("pool", "1G")
    ds = api.datastore_create("t1-ds", "100M", tenant="t1")
    assert api.datastore_resolve(ds["id"], host="h-t1")["name"] == "t1-ds"
    with pytest.raises(NotFound):
        api.datastore_resolve(ds["id"], host="h-none")
    v = api.vvol_create(None, "8M", datastore="t1-ds")
    assert v["tenant"] == "t1"
    with pytest.raises(HasDependants):
        api.datastore_delete(ds["id"])


@pytest.fixture
def own_pool(ceph_cluster: CephLab) -> Iterator[str]:
    """A pool of its own (the rbd plane's default array holds ``ceph_pool``)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    ceph_cluster.create_pool(name)
    try:
        yield name
    finally:
        ceph_cluster.delete_pool(name)


def test_datastore_spans_dir_and_rbd(
    own_pool: str, api: Client, plane_dir: str, ceph_cluster: CephLab
) -> None:
    """Seed 3 across storage systems: one datastore over a ``dir`` container and an
    RBD container places vvols on both, and a host resolving it learns both arrays
    and, per endpoint, which of them it serves (never a path or a key)."""
    api.array_add("files", "dir", os.path.join(plane_dir, "files"))
    rbd = {"pool": own_pool, "conf": ceph_cluster.conf, "keyring": ceph_cluster.admin_keyring}
    api.array_add("ceph", "rbd", rbd)
    api.container_create("cd", "1G", arrays=["files"])
    api.container_create("cr", "1G", arrays=["ceph"])
    api.pe_create("rbd0", "rbd", array="ceph")
    api.pe_create("nbd0", "nbd")
    api.pe_create("f0", "file", path=os.path.join(plane_dir, "nfs"), array="files")
    api.host_add("kvm1")
    ds = api.datastore_create("mixed", "2G", containers=["cd", "cr"])
    assert sorted(ds["arrays"]) == ["ceph", "files"]

    made = [api.vvol_create(None, "256M", datastore="mixed", name=f"m{i}") for i in range(4)]
    assert sorted(v["container"] for v in made) == ["cd", "cd", "cr", "cr"]
    assert {v["container"]: v["array"] for v in made} == {"cd": "files", "cr": "ceph"}
    for i, v in enumerate(made):  # data written through the API reads back on both
        api.vvol_write(v["id"], i * MiB, bytes([0x41 + i]) * 4096)
    api.vvol_snapshot("m2", name="m2@s1")
    api.vvol_write("m2", 2 * MiB, b"\0" * 4096)
    for i, v in enumerate(made):
        if i != 2:
            assert api.vvol_read(v["id"], i * MiB, 4096) == bytes([0x41 + i]) * 4096
    assert api.vvol_read("m2@s1", 2 * MiB, 4096) == b"C" * 4096
    assert api.vvol_read("m2", 2 * MiB, 4096) == b"\0" * 4096
    chosen = api.vvol_create("cr", "16M", datastore="mixed")
    assert chosen["array"] == "ceph" and chosen["datastore"] == ds["id"]

    resolved = api.datastore_resolve("mixed", host="kvm1")
    ids = {a["name"]: a["id"] for a in resolved["arrays"]}
    assert {a["name"]: a["backend"] for a in resolved["arrays"]} == {"files": "dir", "ceph": "rbd"}
    assert {c["name"] for c in resolved["containers"]} == {"cd", "cr"}
    served = {p["name"]: set(p["arrays"]) for p in resolved["pes"]}
    assert served == {
        "rbd0": {ids["ceph"]},
        "nbd0": {ids["files"], ids["ceph"]},
        "f0": {ids["files"]},
    }
    assert ceph_cluster.admin_keyring not in str(resolved)
    shown = api.datastore("mixed")
    # a snapshot is charged its unique bytes (see spacemodel.py), the others their size
    snap_charge = api.vvol("m2@s1")["charge"]
    assert (shown["vvols"], shown["provisioned"]) == (6, 4 * 256 * MiB + snap_charge + 16 * MiB)
    assert api.audit()["ok"]
