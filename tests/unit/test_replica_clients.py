"""Recording the Ceph clients of a replica and blocklisting them, without a cluster.

librados is replaced by a small stand-in (connect, get_addrs, open_ioctx,
shutdown) so the recording rules of ``rbdconn.Cluster`` can be checked
exactly; the real cluster is in tests/integration/test_replica_blocklist.py.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import rados
from sqlalchemy import text

from vvhost.arrays import rbdconn, rbdfence
from vvhost.arrays.rbdops import ceph
from vvhost.arrays.settings import RbdSettings
from vvhost.catalog import clientrepo
from vvhost.catalog.db import MIGRATIONS, Database, _v17_replica_clients, sqlite_url
from vvhost.errors import ArrayOffline, BackendError, NotFound, ReplicaFenced
from vvhost.service.storagefence import cut

_NONCES = itertools.count(1000)


class FakeIoctx:
    def set_namespace(self, ns: str) -> None:
        self.ns = ns

    def close(self) -> None:
        pass


class FakeRados:
    made: list[FakeRados] = []

    def __init__(self, conffile: str, rados_id: str, conf: dict[str, str]) -> None:
        self.nonce = next(_NONCES)
        self.down = False
        FakeRados.made.append(self)

    def connect(self, timeout: int) -> None:
        pass

    def get_addrs(self) -> str:
        return f"[v2:127.0.0.1:0/{self.nonce},v1:127.0.0.1:0/{self.nonce}]"

    def open_ioctx(self, pool: str) -> FakeIoctx:
        assert not self.down, "a shut down handle was used"
        return FakeIoctx()

    def shutdown(self) -> None:
        self.down = True


class Watch:
    """A ``ClientWatch`` that remembers what it heard, and may refuse."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, str, str]] = []
        self.refuse: dict[str, Exception] = {}

    def _hear(self, what: str, array_id: str, addr: str) -> None:
        self.heard.append((what, array_id, addr))
        if what in self.refuse:
            raise self.refuse[what]

    def connected(self, array_id: str, addr: str) -> None:
        self._hear("connected", array_id, addr)

    def closed(self, array_id: str, addr: str) -> None:
        self._hear("closed", array_id, addr)

    def cut_off(self, array_id: str, addr: str) -> None:
        self._hear("cut_off", array_id, addr)


@pytest.fixture
def fake_rados(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeRados]]:
    FakeRados.made = []
    monkeypatch.setattr(rbdconn.rados, "Rados", FakeRados)
    yield FakeRados


def _cluster(watch: Watch) -> rbdconn.Cluster:
    return rbdconn.Cluster("r1", RbdSettings(pool="p"), "array-1", watch)


def _blocklisted_write() -> None:
    raise rados.ConnectionShutdown("write refused", errno=108)


def test_a_client_is_recorded_once_when_it_connects(fake_rados: type[FakeRados]) -> None:
    watch = Watch()
    cluster = _cluster(watch)
    assert cluster.address() is None and watch.heard == []  # nothing until first use
    with cluster.ioctx("ns1"), cluster.ioctx("ns2"):
        pass
    cluster.handle()
    first = f"127.0.0.1:0/{fake_rados.made[0].nonce}"
    assert watch.heard == [("connected", "array-1", first)]  # not per call
    assert cluster.address() == first
    cluster.close()
    assert fake_rados.made[0].down
    assert watch.heard[-1] == ("closed", "array-1", first)


def test_a_blocklisted_client_is_dropped_and_a_new_one_recorded(
    fake_rados: type[FakeRados],
) -> None:
    watch = Watch()
    cluster = _cluster(watch)
    with pytest.raises(rados.ConnectionShutdown), cluster.ioctx():
        _blocklisted_write()
    first = f"127.0.0.1:0/{fake_rados.made[0].nonce}"
    assert watch.heard == [("connected", "array-1", first), ("cut_off", "array-1", first)]
    assert cluster.address() is None
    assert not fake_rados.made[0].down  # other calls may still hold it: shut down at close
    with cluster.ioctx():  # the next call connects anew: a new nonce, recorded again
        pass
    second = f"127.0.0.1:0/{fake_rados.made[1].nonce}"
    assert second != first and watch.heard[-1] == ("connected", "array-1", second)
    cluster.close()
    assert all(h.down for h in fake_rados.made)
    assert watch.heard[-1] == ("closed", "array-1", second)


def test_a_blocklisted_error_is_found_behind_the_backend_error(
    fake_rados: type[FakeRados],
) -> None:
    watch = Watch()
    cluster = _cluster(watch)
    with pytest.raises(BackendError), cluster.ioctx(), ceph("r1", "writing"):
        _blocklisted_write()
    assert [h[0] for h in watch.heard] == ["connected", "cut_off"]
    other = rados.TimedOut("slow", errno=110)
    assert not rbdconn.blocklisted(other) and rbdconn.blocklisted(
        rados.ConnectionShutdown("x", errno=-108)
    )


def test_a_fenced_replica_gets_no_client_and_its_cut_client_says_so(
    fake_rados: type[FakeRados],
) -> None:
    watch = Watch()
    fenced = ReplicaFenced(replica="ra", detail="fenced at epoch 2 (it held 1)")
    watch.refuse["connected"] = fenced
    cluster = _cluster(watch)
    with pytest.raises(ReplicaFenced):
        cluster.handle()
    assert fake_rados.made[0].down and cluster.address() is None  # nothing goes out
    del watch.refuse["connected"]
    watch.refuse["cut_off"] = fenced
    with pytest.raises(ReplicaFenced) as info, cluster.ioctx():
        _blocklisted_write()
    assert isinstance(info.value.__context__, rados.ConnectionShutdown)


def test_without_a_watch_or_an_array_id_nothing_is_reported(
    fake_rados: type[FakeRados],
) -> None:
    cluster = rbdconn.Cluster("r1", RbdSettings(pool="p"), None, Watch())
    assert cluster.clients is None
    cluster.handle()
    assert cluster.address() is not None
    cluster.close()


# -- the blocklist command ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "entity"),
    [
        ("127.0.0.1:0/3271", "127.0.0.1:0/3271"),
        ("[v2:10.0.0.5:0/77,v1:10.0.0.5:0/77]", "10.0.0.5:0/77"),
        ("any:10.0.0.5:0/78", "10.0.0.5:0/78"),
    ],
)
def test_the_blocklist_command_names_one_client(addr: str, entity: str) -> None:
    assert rbdfence.blocklist_command(addr) == {
        "prefix": "osd blocklist",
        "blocklistop": "add",
        "addr": entity,
        "expire": rbdfence.EXPIRE,
    }
    assert rbdfence.blocklist_command(addr, 3600)["expire"] == 3600.0
    with pytest.raises(ValueError):
        rbdfence.blocklist_command(addr, 0)
    assert rbdfence.EXPIRE >= 86400  # outlives any pause a replica comes back from


class Mons:
    """Stands for a cluster's connection: the monitor commands it was given."""

    def __init__(self, own: str) -> None:
        self.own = own
        self.sent: list[dict[str, Any]] = []
        self.array = "r1"

    def address(self) -> str:
        return self.own

    def command(self, cmd: dict[str, Any]) -> bytes:
        self.sent.append(cmd)
        return b""


def test_blocklist_sends_one_command_per_client_never_for_itself() -> None:
    mons = Mons(own="127.0.0.1:0/5")
    rbdfence.blocklist(mons, ["127.0.0.1:0/3", "[v2:127.0.0.1:0/5]", "127.0.0.1:0/4"])  # type: ignore[arg-type]
    assert [c["addr"] for c in mons.sent] == ["127.0.0.1:0/3", "127.0.0.1:0/4"]


# -- the catalog side --------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: str) -> Iterator[Database]:
    database = Database(sqlite_url(os.path.join(tmp_path, "c.db")))
    try:
        yield database
    finally:
        database.close()


def test_the_migration_adds_the_table(tmp_path: str) -> None:
    path = sqlite_url(os.path.join(tmp_path, "c.db"))
    db = Database(path)
    number = MIGRATIONS.index(_v17_replica_clients) + 1
    with db.tx() as conn:  # a catalog from before the migration
        conn.execute(text("DROP TABLE replica_clients"))
        conn.execute(text("UPDATE schema_version SET version = :v"), {"v": number - 1})
    db.close()
    db = Database(path)
    assert db.version() == len(MIGRATIONS)
    with db.tx() as conn:
        clientrepo.record(conn, "ra", 1, "array-1", "127.0.0.1:0/1")
        assert [c.addr for c in clientrepo.of(conn, "ra")] == ["127.0.0.1:0/1"]
    db.close()


def test_recorded_clients_of_a_replica_that_is_not_live_are_stale(db: Database) -> None:
    with db.tx() as conn:
        clientrepo.record(conn, "ra", 1, "array-1", "127.0.0.1:0/1")
        clientrepo.record(conn, "ra", 1, "array-1", "127.0.0.1:0/1")  # once
        clientrepo.record(conn, "ra", 1, "array-2", "127.0.0.1:0/2")
        clientrepo.record(conn, "rb", 3, "array-1", "127.0.0.1:0/3")
        ra = clientrepo.of(conn, "ra")
        assert [(c.array_id, c.addr, c.epoch) for c in ra] == [
            ("array-1", "127.0.0.1:0/1", 1),
            ("array-2", "127.0.0.1:0/2", 1),
        ]
        assert abs(ra[0].since - __import__("time").time()) < 60  # the catalog's clock
        # no replica row is live here: every client is stale
        assert {c.addr for c in clientrepo.stale(conn)} == {f"127.0.0.1:0/{n}" for n in (1, 2, 3)}
        assert {c.addr for c in clientrepo.stale(conn, ["rb"])} == {"127.0.0.1:0/3"}
        # rb is live at the epoch it recorded with: its client is not stale
        now = clientrepo._now(conn)
        conn.execute(
            text(
                "INSERT INTO replicas (id, node, started, heartbeat, epoch, lease_until, state)"
                " VALUES ('rb', 'n', :t, :t, 3, :t + 5, 'live')"
            ),
            {"t": now - 1},
        )
        assert {c.addr for c in clientrepo.stale(conn)} == {"127.0.0.1:0/1", "127.0.0.1:0/2"}
        # rb registered again later (same epoch after its row went): the old client is stale
        conn.execute(text("UPDATE replicas SET started = :t"), {"t": now + 10})
        assert "127.0.0.1:0/3" in {c.addr for c in clientrepo.stale(conn)}
        clientrepo.forget(conn, "ra", "array-2", "127.0.0.1:0/2")
        clientrepo.remove(conn, clientrepo.of(conn, "rb"))
        assert [c.addr for c in clientrepo.stale(conn)] == ["127.0.0.1:0/1"]


class Backends:
    """Arrays as the takeover sees them: one blocklists, one is out of reach, one is gone."""

    def __init__(self) -> None:
        self.fenced: dict[str, list[str]] = {}

    def __call__(self, array_id: str) -> Any:
        if array_id == "gone":
            raise NotFound(kind="array", ref=array_id)
        backends = self

        class Backend:
            def fence_clients(self, addrs: Sequence[str]) -> None:
                if array_id == "down":
                    raise ArrayOffline(array="down", reason="cannot reach the ceph cluster")
                backends.fenced[array_id] = list(addrs)

        return Backend()


def test_cut_blocklists_per_array_and_keeps_what_it_could_not_reach(db: Database) -> None:
    with db.tx() as conn:
        clientrepo.record(conn, "ra", 1, "up", "127.0.0.1:0/1")
        clientrepo.record(conn, "ra", 1, "up", "127.0.0.1:0/2")
        clientrepo.record(conn, "ra", 1, "down", "127.0.0.1:0/3")
        clientrepo.record(conn, "rc", 1, "gone", "127.0.0.1:0/4")
        clientrepo.record(conn, "rd", 1, "up", "127.0.0.1:0/5")
    backends = Backends()
    done = cut(db, backends, ["ra", "rc"])
    assert backends.fenced == {"up": ["127.0.0.1:0/1", "127.0.0.1:0/2"]}
    assert done["ra"].blocklisted == ["127.0.0.1:0/1", "127.0.0.1:0/2"]
    assert len(done["ra"].failed) == 1 and "array down" in done["ra"].failed[0]
    assert "not reached: array down" in done["ra"].note()
    assert "rc" not in done  # its array is gone: nothing to cut, the row goes
    with db.tx() as conn:  # what could not be reached is kept for the next try
        assert [c.addr for c in clientrepo.stale(conn)] == ["127.0.0.1:0/3", "127.0.0.1:0/5"]
