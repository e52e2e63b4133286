"""Protocol endpoints and bindings against the real daemons (tgtd, qemu-storage-daemon)
and real clients (qemu-img, qemu-io, iscsi-ls, iscsi-inq, nbdinfo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.iscsiauth import authed, portal_url
from tests.patterns import Patterns
from tests.runner import run
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.errors import InUse

QEMU_IQN = "iqn.2008-11.org.linux-kvm"  # what qemu-img/qemu-io log in as
OTHER_IQN = "iqn.2026-11.test.vvhost:other"
MiB = 1 << 20


def qemu_io(uri: str, command: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run("qemu-io", "-f", "raw", "-c", command, uri, ok=ok)


@dataclass
class Plane:
    server: ServerProcess
    api: Client
    tmp: str

    def restart(self, crash: bool = False) -> None:
        self.api.close()
        if crash:
            self.server.kill()
        else:
            self.server.proc and self.server.proc.terminate()
            self.server.proc and self.server.proc.wait(30)
        self.server = ServerProcess(
            self.server.state_dir, self.server.socket, private_tgtd=True
        ).start()
        self.api = self.server.client()

    def pid(self, pe: str) -> int:
        pid = self.api.pe(pe)["pid"]
        assert isinstance(pid, int)
        return pid


@pytest.fixture
def plane(tmp_path: str) -> Iterator[Plane]:
    server = ServerProcess(
        os.path.join(tmp_path, "state"), os.path.join(tmp_path, "s.sock"), private_tgtd=True
    ).start()
    p = Plane(server, server.client(), str(tmp_path))
    try:
        p.api.host_add("h1", QEMU_IQN)
        p.api.host_add("h2", OTHER_IQN)
        p.api.pe_create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
        p.api.pe_create("nbd1", "nbd")
        p.api.pe_create("nbd2", "nbd")
        p.api.pe_create("file1", "file", path=os.path.join(tmp_path, "nfs"))
        p.api.container_create("pool", "4G")
        yield p
    finally:
        p.api.close()
        p.server.stop()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in _pids(p.server))


def _pids(server: ServerProcess) -> list[int]:
    pids = []
    for rundir in server.endpoint_rundirs():
        try:
            with open(os.path.join(rundir, "pid")) as fh:
                pids.append(int(fh.read()))
        except FileNotFoundError:
            pass
    return pids


def _gone(handle: dict[str, object], tmp: str) -> bool:
    """Is the handle's LUN / export / file really gone from the endpoint?"""
    proto = handle["protocol"]
    if proto == "iscsi":
        out = run("iscsi-ls", "-i", QEMU_IQN, "-s", portal_url(handle)).stdout
        return f"Lun:{handle['lun']} " not in out
    if proto == "nbd":
        out = run("nbdinfo", "--list", f"nbd+unix:///?socket={handle['socket']}", ok=False).stdout
        return str(handle["export"]) not in out
    return not os.path.lexists(str(handle["path"]))


@pytest.mark.parametrize("pe", ["iscsi1", "nbd1", "file1"])
def test_bind_write_read_unbind(plane: Plane, patterns: Patterns, pe: str) -> None:
    v = plane.api.vvol_create("pool", "64M", name="d")
    handle = plane.api.bind_one("d", "h1", pe=pe)
    assert handle["protocol"] == plane.api.pe(pe)["protocol"] and handle["refcount"] == 1
    info = run("qemu-img", "info", "--output=json", authed(handle)).stdout
    assert '"virtual-size": 67108864' in info
    qemu_io(authed(handle), "write -P 0x5a 1M 2M")
    patterns_ok = run("qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 2M", v["path"]).stdout
    assert "read 2097152/2097152" in patterns_ok  # the array file holds what went in
    # a second binding, for another host, through another endpoint, sees the same data
    other = plane.api.bind_one("d", "h2", pe="nbd2")
    assert "read 2097152/2097152" in qemu_io(authed(other), "read -P 0x5a 1M 2M").stdout
    assert plane.api.audit()["ok"], plane.api.audit()
    plane.api.unbind(["d"], "h1")
    plane.api.unbind(["d"], "h2")
    assert _gone(handle, plane.tmp) and _gone(other, plane.tmp)
    assert plane.api.bindings() == []
    assert plane.api.audit()["ok"]


def test_iscsi_identity_and_acl(plane: Plane) -> None:
    v = plane.api.vvol_create("pool", "16M", name="d")
    h = plane.api.bind_one("d", "h1", pe="iscsi1")
    serial = v["id"].replace("-", "")
    assert h["serial"] == serial
    vpd80 = run("iscsi-inq", "-i", QEMU_IQN, "-e", "1", "-c", "128", authed(h)).stdout
    assert serial in vpd80
    vpd83 = run("iscsi-inq", "-i", QEMU_IQN, "-e", "1", "-c", "131", authed(h)).stdout
    assert v["id"] in vpd83
    seen = run("iscsi-ls", "-i", QEMU_IQN, "-s", portal_url(h)).stdout
    assert h["target"] in seen and "Lun:1" in seen
    other = run("iscsi-ls", "-i", OTHER_IQN, "-s", portal_url(h), ok=False).stdout
    assert h["target"] not in other  # h2's initiator cannot even see h1's target
    denied = run("iscsi-inq", "-i", OTHER_IQN, authed(h), ok=False)
    assert denied.returncode != 0
    shared = plane.api.bind_one(v["id"], "h2", pe="iscsi1", shared=True)
    assert "shared" in shared["target"]
    assert run("iscsi-inq", "-i", OTHER_IQN, "-e", "1", "-c", "128", authed(shared)).returncode == 0


def test_refcount_readonly_snapshots_and_guards(plane: Plane) -> None:
    plane.api.vvol_create("pool", "16M", name="d")
    snap = plane.api.vvol_snapshot("d")  # before binding: a copy of a vvol being written is torn
    first = plane.api.bind_one("d", "h1", pe="nbd1")
    again = plane.api.bind_one("d", "h1")
    assert again["uri"] == first["uri"] and again["refcount"] == 2
    with pytest.raises(InUse):
        plane.api.bind_one("d", "h1", pe="file1")  # bound elsewhere: use rebind
    with pytest.raises(InUse) as err:
        plane.api.vvol_delete("d")
    assert "h1" in str(err.value) and "nbd1" in str(err.value)
    if not plane.api.array("local")["capabilities"].get("reflink"):
        with pytest.raises(InUse, match="bound writable for h1"):
            plane.api.vvol_snapshot("d")
    with pytest.raises(InUse):
        plane.api.vvol_revert("d", snap["id"])
    ro = plane.api.bind_one(snap["id"], "h1", pe="iscsi1")
    assert ro["readonly"]
    assert qemu_io(authed(ro), "write -P 1 0 64k", ok=False).returncode != 0
    assert plane.api.unbind(["d"], "h1")[0]["refcount"] == 1
    assert not _gone(first, plane.tmp)
    plane.api.unbind(["d", snap["id"]], "h1", drop_all=True)
    assert _gone(first, plane.tmp) and _gone(ro, plane.tmp)
    results = plane.api.bind(["d", "nope"], "h1", pe="file1")
    assert [r["ok"] for r in results] == [True, False]
    assert results[1]["error"]["code"] == "not-found"
    plane.api.unbind(["d"], "h1")
    plane.api.vvol_delete(snap["id"])
    plane.api.vvol_delete("d")
    assert plane.api.audit()["ok"]


def test_rebind_new_path_before_old_goes(plane: Plane) -> None:
    plane.api.vvol_create("pool", "16M", name="d")
    old = plane.api.bind_one("d", "h1", pe="iscsi1")
    qemu_io(authed(old), "write -P 0x33 0 1M")
    new = plane.api.rebind("d", "h1", "nbd1")
    assert new["protocol"] == "nbd" and new["refcount"] == 1
    assert "read 1048576/1048576" in qemu_io(authed(new), "read -P 0x33 0 1M").stdout
    assert _gone(old, plane.tmp)
    newer = plane.api.rebind("d", "h1", "file1")
    assert "read 1048576/1048576" in qemu_io(authed(newer), "read -P 0x33 0 1M").stdout
    assert _gone(new, plane.tmp)
    assert [b["pe"] for b in plane.api.bindings(host="h1")] == ["file1"]
    assert plane.api.audit()["ok"]


def _wait_restored(plane: Plane, pe: str, old_pid: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = plane.api.pe(pe)
        if info["alive"] and info["pid"] != old_pid and plane.api.audit()["ok"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{pe} was not restored: {plane.api.pe(pe)} {plane.api.audit()}")


@pytest.mark.parametrize("pe", ["iscsi1", "nbd1"])
def test_endpoint_daemon_death_is_repaired(plane: Plane, pe: str) -> None:
    plane.api.vvol_create("pool", "16M", name="d")
    h = plane.api.bind_one("d", "h1", pe=pe)
    qemu_io(authed(h), "write -P 0x44 0 1M")
    pid = plane.pid(pe)
    os.kill(pid, 9)
    _wait_restored(plane, pe, pid)
    assert plane.api.pe(pe)["restarts"] >= 1
    assert "read 1048576/1048576" in qemu_io(authed(h), "read -P 0x44 0 1M").stdout


def test_bindings_survive_control_plane_restart_and_crash(plane: Plane) -> None:
    plane.api.vvol_create("pool", "16M", name="d")
    handles = [plane.api.bind_one("d", "h1", pe="iscsi1"), plane.api.bind_one("d", "h2", pe="nbd1")]
    qemu_io(authed(handles[0]), "write -P 0x55 0 1M")
    plane.restart()
    for h in handles:
        assert "read 1048576/1048576" in qemu_io(authed(h), "read -P 0x55 0 1M").stdout
    pids = (plane.pid("iscsi1"), plane.pid("nbd1"))
    plane.restart(crash=True)  # kill -9: the data path stays up and is adopted
    assert (plane.pid("iscsi1"), plane.pid("nbd1")) == pids
    for h in handles:
        assert "read 1048576/1048576" in qemu_io(authed(h), "read -P 0x55 0 1M").stdout
    assert len(plane.api.bindings()) == 2 and plane.api.audit()["ok"]


def test_concurrent_binds_stay_exact(plane: Plane) -> None:
    vids = [plane.api.vvol_create("pool", "1M")["id"] for _ in range(8)]
    pes = ["iscsi1", "nbd1", "file1"]

    def worker(n: int) -> None:
        client = plane.server.client()
        try:
            for r in range(8):  # 64 binds and 64 unbinds in all
                vid = vids[(n + r) % len(vids)]
                host = "h1" if n % 2 else "h2"
                try:
                    client.bind_one(vid, host, pe=pes[vids.index(vid) % 3])
                finally:
                    client.unbind([vid], host)
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert plane.api.bindings() == []
    report = plane.api.audit()
    assert report["ok"], report["problems"]
    kept = [plane.api.bind_one(v, "h1", pe=pes[i % 3]) for i, v in enumerate(vids)]
    assert sorted(h["refcount"] for h in kept) == [1] * 8 and plane.api.audit()["ok"]


def vvhost(plane: Plane, *args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "vvhost", "--socket", plane.server.socket, *args, ok=False)


def test_cli_binding_commands(plane: Plane) -> None:
    plane.api.vvol_create("pool", "16M", name="d")
    out = vvhost(plane, "vvol", "bind", "d", "--host", "h1", "--pe", "iscsi1")
    assert out.returncode == 0 and "iscsi://" in out.stdout
    listed = json.loads(vvhost(plane, "binding", "list", "--host", "h1", "--json").stdout)
    assert [b["pe"] for b in listed] == ["iscsi1"]
    for cmd in (["pe", "list"], ["pe", "show", "nbd1"], ["host", "list"], ["host", "show", "h1"]):
        assert json.loads(vvhost(plane, *cmd, "--json").stdout)
    moved = vvhost(plane, "vvol", "rebind", "d", "--host", "h1", "--pe", "nbd1")
    assert moved.returncode == 0 and moved.stdout.startswith("nbd+unix://")
    bad = {
        ("host", "add", "h3", "--iqn", "not an iqn"): 2,
        ("host", "add", "bad/name"): 2,
        ("pe", "create", "x", "--protocol", "iscsi"): 2,
        ("pe", "create", "x", "--protocol", "file"): 2,
        ("pe", "create", "x", "--protocol", "nbd", "--portal", "nowhere"): 2,
        ("pe", "delete", "nbd1"): 4,
        ("host", "remove", "h1"): 4,
        ("vvol", "delete", "d"): 4,
        ("vvol", "bind", "d", "--host", "nohost"): 3,
        ("vvol", "unbind", "d", "--host", "h2"): 3,
        ("vvol", "rebind", "d", "--host", "h1", "--pe", "nope"): 3,
    }
    for args, code in bad.items():
        res = vvhost(plane, *args)
        assert res.returncode == code, (args, res.stderr)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("vvhost: error: "), res.stderr
    assert [p["name"] for p in plane.api.pes()] == ["iscsi1", "nbd1", "nbd2", "file1"]
    assert len(plane.api.bindings()) == 1 and plane.api.audit()["ok"]
    assert vvhost(plane, "vvol", "unbind", "d", "--host", "h1").returncode == 0
