"""``vvhost serve`` stopped by a real signal (SIGTERM from a service manager,
SIGINT from Ctrl-C): the listeners stop, then the endpoint daemons (unless
``--keep-endpoints``), the catalog is closed and the process exits 0.

    test ──SIGTERM/SIGINT──> vvhost serve ──> tgtd (iSCSI LUN bound)
                                          └─> qemu-storage-daemon (NBD export bound)
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.patterns import CHUNK, Patterns
from tests.runner import pid_running
from vvhost.daemon import ServerProcess, free_port

QEMU_IQN = "iqn.2008-11.org.linux-kvm"


@dataclass
class Served:
    state: str
    socket: str
    sha: str
    path: str

    def server(self, *args: str) -> ServerProcess:
        return ServerProcess(self.state, self.socket, private_tgtd=True, args=list(args)).start()


@pytest.fixture
def served(tmp_path: str, patterns: Patterns) -> Iterator[Served]:
    """A control plane with an iSCSI and an NBD endpoint, one vvol bound through each."""
    state, sock = os.path.join(tmp_path, "state"), os.path.join(tmp_path, "s.sock")
    server = ServerProcess(state, sock, private_tgtd=True).start()
    try:
        api = server.client()
        api.host_add("h1", QEMU_IQN)
        api.pe_create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
        api.pe_create("nbd1", "nbd")
        api.container_create("pool", "1G")
        v = api.vvol_create("pool", "16M", name="d")
        patterns.write(v["path"], "A", [0, 7 * CHUNK])
        api.bind_one("d", "h1", pe="iscsi1")
        api.vvol_create("pool", "16M", name="e")
        api.bind_one("e", "h1", pe="nbd1")
        api.close()
        server.stop()
        yield Served(state, sock, patterns.sha(v["path"]), v["path"])
    finally:
        server.stop()  # and any endpoint daemon a failed test left


def _endpoint_pids(server: ServerProcess) -> dict[str, int]:
    api = server.client()
    try:
        pids = {pe: api.pe(pe)["pid"] for pe in ("iscsi1", "nbd1")}
    finally:
        api.close()
    assert all(isinstance(p, int) and pid_running(p) for p in pids.values()), pids
    return pids


def _catalog_intact(server: ServerProcess, served: Served, patterns: Patterns) -> None:
    api = server.client()
    try:
        assert sorted(v["name"] for v in api.vvols()) == ["d", "e"]
        bound = {b["pe"]: b["state"] for b in api.bindings(host="h1")}
        assert bound == {"iscsi1": "active", "nbd1": "active"}, bound
        assert api.audit()["ok"]
        assert patterns.sha(served.path) == served.sha
    finally:
        api.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_listeners_then_endpoints(
    served: Served, patterns: Patterns, sig: signal.Signals
) -> None:
    server = served.server()
    pids = _endpoint_pids(server)
    assert server.signal(sig) == 0, server.log_tail()
    assert "Traceback" not in server.log_tail(200)
    assert not os.path.exists(served.socket)
    assert not any(pid_running(p) for p in pids.values()), pids
    again = served.server()
    try:
        _catalog_intact(again, served, patterns)
        assert all(p not in _endpoint_pids(again).values() for p in pids.values())
    finally:
        again.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_keep_endpoints_leaves_daemons_for_the_next_start(
    served: Served, patterns: Patterns, sig: signal.Signals
) -> None:
    server = served.server("--keep-endpoints")
    pids = _endpoint_pids(server)
    assert server.signal(sig) == 0, server.log_tail()
    assert not os.path.exists(served.socket)
    assert all(pid_running(p) for p in pids.values()), pids  # the data path stays up
    again = served.server()
    try:
        assert _endpoint_pids(again) == pids  # adopted, not restarted
        _catalog_intact(again, served, patterns)
    finally:
        assert again.signal(signal.SIGTERM) == 0
        again.stop_endpoint_daemons()
    assert not any(pid_running(p) for p in pids.values()), pids
