"""Per-VM leases and the config document's compare-and-set, at the API, over real
TLS with host tokens: a host of another tenant cannot lease (or see) a VM, a host
cannot break another host's lease, a stale lease token cannot renew, a lease whose
owner stopped renewing is taken over once it expired, a save from a stale read of
the config document is refused (no lost update), and a snapshot's config document
cannot be replaced."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import pytest

from tests.tlsfixtures import start_tls_plane
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.errors import (
    Forbidden,
    LeaseLost,
    NotFound,
    ReadOnly,
    StaleGeneration,
    VmBusy,
)


@dataclass
class Plane:
    server: ServerProcess
    admin: Client
    url: str
    ca: str
    tokens: dict[str, str]
    config: str  # tenant alpha's VM config vvol

    def host(self, name: str) -> Client:
        return Client.https(self.url, self.tokens[name], self.ca)


@pytest.fixture
def plane(tmp_path: str) -> Iterator[Plane]:
    tls = start_tls_plane(tmp_path)
    server = tls.server
    admin = server.client()
    try:
        admin.tenant_create("alpha")
        admin.tenant_create("beta")
        tokens = {
            h: admin.host_add(h, f"iqn.2026-11.test:{h}", tenant)["token"]
            for h, tenant in (("ha", "alpha"), ("ha2", "alpha"), ("hb", "beta"))
        }
        admin.container_create("shared", "2G")
        admin.datastore_create("ds-a", "1G", ["shared"], tenant="alpha")
        admin.datastore_create("ds-b", "1G", ["shared"], tenant="beta")
        p = Plane(server, admin, tls.url, tls.ca, tokens, "")
        with closing(p.host("ha")) as a:
            cfg = a.vvol_create(None, "1M", type="config", name="vm1.config", datastore="ds-a")
            a.config_put(cfg["id"], {"name": "vm1", "points": []})
            p.config = cfg["id"]
        yield p
    finally:
        admin.close()
        server.stop()


def test_a_vm_lease_is_one_holder_at_a_time(plane: Plane) -> None:
    cfg = plane.config
    with (
        closing(plane.host("ha")) as a,
        closing(plane.host("ha2")) as a2,
        closing(plane.host("hb")) as b,
    ):
        held = a.lease_acquire(cfg, "ha", "vm-snapshot", 4242, 2.0)
        assert held["taken_over"] is None and held["epoch"] == 1

        # another host of the tenant: busy, one line naming the operation, time and host
        with pytest.raises(VmBusy) as busy:
            a2.lease_acquire(cfg, "ha2", "vm-revert", 77, 30.0)
        assert busy.value.exit_code == 4
        assert str(busy.value).startswith("busy: vm-snapshot since ")
        assert str(busy.value).endswith(" on ha")
        # ... and it may not pass the lease off as one of its own dead processes
        with pytest.raises(VmBusy):
            a2.lease_acquire(cfg, "ha2", "vm-revert", 77, 30.0, dead_epoch=held["epoch"])
        # nor act in ha's name
        with pytest.raises(Forbidden):
            a2.lease_acquire(cfg, "ha", "vm-revert", 77, 30.0, dead_epoch=held["epoch"])

        # another tenant's host does not even see the VM
        for call in (
            lambda: b.lease_acquire(cfg, "hb", "vm-snapshot", 1, 30.0),
            lambda: b.lease_show(cfg),
            lambda: b.lease_release(cfg, "0" * 32),
        ):
            with pytest.raises(NotFound):
                call()
        assert a.lease_show(cfg)["lease"]["host"] == "ha"

        # a wrong token neither renews nor releases
        with pytest.raises(LeaseLost):
            a2.lease_renew(cfg, "0" * 32, 30.0)
        assert a2.lease_release(cfg, "0" * 32)["released"] is False
        a.lease_renew(cfg, held["token"], 2.0)

        # the owner stops renewing: once expired, the lease is taken over
        time.sleep(2.2)
        took = a2.lease_acquire(cfg, "ha2", "vm-revert", 77, 30.0)
        assert took["taken_over"]["host"] == "ha" and took["taken_over"]["op"] == "vm-snapshot"
        assert took["epoch"] == 2
        # the old owner's token is stale now
        with pytest.raises(LeaseLost):
            a.lease_renew(cfg, held["token"], 30.0)
        assert a.lease_release(cfg, held["token"])["released"] is False
        assert a.lease_show(cfg)["lease"]["host"] == "ha2"
        assert a2.lease_release(cfg, took["token"])["released"] is True
        assert a.lease_show(cfg)["lease"] is None

        # a VM deleted under its lease: the holder still releases it (nothing left behind)
        last = a.lease_acquire(cfg, "ha", "vm-delete", 4242, 30.0)
        a.vvol_delete(cfg)
        with pytest.raises(NotFound):
            a.lease_show(cfg)
        assert a.lease_release(cfg, last["token"])["released"] is True


def test_config_document_is_saved_compare_and_set(plane: Plane) -> None:
    cfg = plane.config
    with closing(plane.host("ha")) as a, closing(plane.host("ha2")) as a2:
        one = a.config_read(cfg)
        two = a2.config_read(cfg)
        assert one["generation"] == two["generation"]
        doc1 = {**one["document"], "points": [{"name": "s1"}]}
        saved = a.config_put(cfg, doc1, one["generation"])
        assert saved["generation"] == one["generation"] + 1
        # the second writer read before the first saved: its save would lose s1
        doc2 = {**two["document"], "points": [{"name": "s2"}]}
        with pytest.raises(StaleGeneration) as stale:
            a2.config_put(cfg, doc2, two["generation"])
        assert stale.value.exit_code == 4
        assert a.config_get(cfg)["points"] == [{"name": "s1"}]
        # read again, then both changes are kept
        again = a2.config_read(cfg)
        a2.config_put(
            cfg,
            {**again["document"], "points": [{"name": "s1"}, {"name": "s2"}]},
            again["generation"],
        )
        assert [p["name"] for p in a.config_get(cfg)["points"]] == ["s1", "s2"]


def test_a_snapshot_config_document_cannot_be_replaced(plane: Plane) -> None:
    cfg = plane.config
    with closing(plane.host("ha")) as a:
        snap = a.vvol_snapshot(cfg, name="vm1.config@s1")["id"]
        before = a.config_read(snap)
        for generation in (None, before["generation"]):
            with pytest.raises(ReadOnly) as ro:
                a.config_put(snap, {"name": "evil"}, generation)
            assert ro.value.exit_code == 4
        assert a.config_get(snap) == before["document"] == {"name": "vm1", "points": []}
    # root on the control plane's own machine may not either
    with pytest.raises(ReadOnly):
        plane.admin.config_put(snap, {"name": "evil"})
    assert plane.admin.config_get(snap) == {"name": "vm1", "points": []}
