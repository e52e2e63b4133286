"""The reconciler and ``vvhost audit --fix`` against a real tgtd and a real array:
every new finding becomes one event (not one per round); --fix detaches the stale
LUN and removes the old orphan vvhost made, and never touches what vvhost did
not make: a foreign target and its LUN, foreign files in the array directory.
The bound vvol's data stays intact throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.iscsiauth import authed
from tests.patterns import CHUNK, Patterns
from tests.runner import run
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.tools.tgtadm import Tgtadm

QEMU_IQN = "iqn.2008-11.org.linux-kvm"
FOREIGN_TID = 77


@pytest.fixture
def server(tmp_path: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        os.path.join(str(tmp_path), "state"),
        os.path.join(str(tmp_path), "s.sock"),
        args=["--reconcile-interval", "0.5"],
        private_tgtd=True,
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def control(server: ServerProcess, port: int) -> Tgtadm:
    tgt = Tgtadm(port)
    tgt.ipc.path = os.path.join(server.state_dir, "run-tgtd", f"socket.{port}")
    return tgt


def wait_for(what: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def kinds(api: Client, kind: str) -> list[dict]:
    return [e for e in api.events()["events"] if e["kind"] == kind]


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vvhost", "--socket", server.socket, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_findings_become_events_once_and_fix_spares_foreign_things(
    server: ServerProcess, tmp_path: str
) -> None:
    patterns = Patterns()
    api = server.client()
    api.host_add("h1", QEMU_IQN)
    api.pe_create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
    api.container_create("pool", "1G")
    v = api.vvol_create("pool", "16M", name="v1")
    path = api.vvol(v["id"])["path"]
    patterns.write(path, "A", [0, CHUNK])
    handle = api.bind_one("v1", "h1", pe="iscsi1")
    pe = api.pe("iscsi1")
    tgt = control(server, int(pe["config"]["control_port"]))
    ours = {t.tid: t for t in tgt.show()}
    assert len(ours) == 1
    tid = next(iter(ours))

    # a stale LUN in vvhost's own target (as an unbind cut short would leave it)
    stale_file = os.path.join(str(tmp_path), "stale.img")
    with open(stale_file, "wb") as fh:
        fh.truncate(1 << 20)
    tgt.lun_new(tid, 9, stale_file)
    # a target someone else added to the daemon, with a LUN on their own file
    foreign = os.path.join(str(tmp_path), "foreign.img")
    with open(foreign, "wb") as fh:
        fh.write(b"not vvhost's" * 1000)
    foreign_sha = Patterns.sha(foreign)
    tgt.target_new(FOREIGN_TID, "iqn.2026-12.test:foreign")
    tgt.lun_new(FOREIGN_TID, 1, foreign)
    # an orphan vvhost made (a volume file named by a vvol id, no catalog row),
    # and files that are not vvhost's in the same directory
    vdir = os.path.dirname(path)
    orphan_id = str(uuid.uuid4())
    orphan = os.path.join(vdir, f"{orphan_id}.raw")
    with open(orphan, "wb") as fh:
        fh.truncate(4 << 20)
    strangers = {}
    for name, data in (("backup.raw", b"keep me" * 100), ("README.txt", b"hands off\n")):
        with open(os.path.join(vdir, name), "wb") as fh:
            fh.write(data)
        strangers[name] = Patterns.sha(os.path.join(vdir, name))

    # the background reconciler turns each new finding into one event
    wait_for(lambda: len(kinds(api, "leak.found")) >= 3)
    leaks = {e["message"] for e in kinds(api, "leak.found")}
    assert any(f"{tid}/9" in m for m in leaks)
    assert any(f"{FOREIGN_TID}/1" in m for m in leaks)
    assert any(orphan_id in m for m in leaks)
    before = len(api.events()["events"])
    time.sleep(2.5)  # several more rounds: the same findings are not reported again
    assert len(kinds(api, "leak.found")) == len(leaks)
    assert all(e["kind"] != "leak.found" for e in api.events()["events"][before:])
    assert any(i["kind"] == "finding" for i in api.health_report()["items"])
    assert f'vvhost_findings{{kind="leak.found"}} {float(len(leaks))}' in api.metrics()

    # --fix with the default grace period: the fresh orphan stays, the stale LUN goes
    res = cli(server, "audit", "--fix")
    assert res.returncode == 1, res.stderr  # foreign things remain: still not consistent
    assert f"detached: endpoint iscsi1: {tid}/9" in res.stdout
    assert f"left: endpoint iscsi1: {FOREIGN_TID}/1 (not made by vvhost" in res.stdout
    assert "grace period" in res.stdout and os.path.exists(orphan)
    # --grace 0: the orphan goes too; the foreign target and files never
    res = cli(server, "audit", "--fix", "--grace", "0", "--json")
    report = json.loads(res.stdout)
    actions = {(r["action"], r["what"].split(": ", 1)[1]) for r in report["repairs"]}
    assert ("removed", orphan) in actions
    assert not os.path.exists(orphan)
    luns = {t.tid: {lun.lun for lun in t.luns} for t in tgt.show()}
    assert 9 not in luns[tid] and luns[FOREIGN_TID] >= {1}
    assert Patterns.sha(foreign) == foreign_sha
    for name, sha in strangers.items():
        assert Patterns.sha(os.path.join(vdir, name)) == sha
    assert os.path.exists(stale_file)  # the LUN went, never its file
    # the bound vvol still serves its data over iSCSI
    got = run("qemu-img", "compare", "-f", "raw", "-F", "raw", path, authed(handle)).returncode
    assert got == 0
    patterns.check(path, "A", [0, CHUNK])
    fixed = {e["message"] for e in kinds(api, "audit.fixed")}
    assert any(orphan_id in m and "removed" in m for m in fixed)
    wait_for(lambda: any(orphan_id in e["message"] for e in kinds(api, "audit.resolved")))
    api.close()
