"""Trust boundaries of the protocol endpoints, against the real daemons and clients:

- a ``file`` endpoint never deletes what it did not make, and refuses directories
  that hold files or overlap arrays, other endpoints or the control plane's state;
- a snapshot bound through a ``file`` endpoint cannot be written, even by root;
- a removed host keeps no iSCSI access, its successor under the same name gets it,
  and host names that differ only in case get different targets;
- vvhost never drives a tgtd it did not start, and an endpoint whose portal is
  held by another process is not alive.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.iscsiauth import authed, image_opts, portal_url
from tests.patterns import Patterns
from tests.runner import run
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.errors import EndpointError
from vvhost.pe.immutable import is_immutable
from vvhost.tools.tgtadm import Tgtadm, parse_show
from vvhost.tools.tgtd_ipc import MODE_TARGET, OP_SHOW

QEMU_IQN = "iqn.2008-11.org.linux-kvm"  # what qemu-img/qemu-io log in as
OLD_IQN = "iqn.2026-11.test.vvhost:old"
NEW_IQN = "iqn.2026-11.test.vvhost:new"
MiB = 1 << 20


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
            self.server.stop()
        self.server = ServerProcess(
            self.server.state_dir, self.server.socket, private_tgtd=True
        ).start()
        self.api = self.server.client()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(sys.executable, "-m", "vvhost", "--socket", self.server.socket, *args, ok=False)

    def refused(self, code: int, *args: str) -> str:
        """Run a CLI command that must be refused: one line on stderr, exit ``code``."""
        res = self.cli(*args)
        assert res.returncode == code, (args, res.returncode, res.stderr)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("vvhost: error: "), res.stderr
        return res.stderr

    def control(self, port: int) -> Tgtadm:
        """Talk to the tgtd of control port ``port`` in the plane's private /run/tgtd."""
        tgt = Tgtadm(port)
        tgt.ipc.path = os.path.join(self.server.state_dir, "run-tgtd", f"socket.{port}")
        return tgt


@pytest.fixture
def plane(tmp_path: str) -> Iterator[Plane]:
    server = ServerProcess(
        os.path.join(tmp_path, "state"), os.path.join(tmp_path, "s.sock"), private_tgtd=True
    ).start()
    p = Plane(server, server.client(), str(tmp_path))
    try:
        p.api.container_create("pool", "2G")
        yield p
    finally:
        p.api.close()
        p.server.stop()


def _tree(path: str) -> dict[str, str]:
    """relative path -> sha256 (or "dir") of everything under ``path``."""
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = "dir"
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, path)] = (
                "link:" + os.readlink(full) if os.path.islink(full) else Patterns.sha(full)
            )
    return out


def _user_files(directory: str) -> dict[str, str]:
    os.makedirs(os.path.join(directory, "photos"), exist_ok=True)
    for name, data in (("notes.txt", b"mine\n"), ("photos/cat.jpg", os.urandom(4096))):
        with open(os.path.join(directory, name), "wb") as fh:
            fh.write(data)
    return _tree(directory)


# -- file endpoint: only its own entries ----------------------------------------------------
def test_file_endpoint_refuses_occupied_and_overlapping_dirs(plane: Plane) -> None:
    users = os.path.join(plane.tmp, "users")
    before = _user_files(users)
    array_dir = plane.api.arrays()[0]["path"]
    vvols_dir = os.path.join(array_dir, "vvols")
    os.makedirs(os.path.join(plane.tmp, "nfs"))
    plane.api.pe_create("f0", "file", path=os.path.join(plane.tmp, "nfs"))
    alias = os.path.join(plane.tmp, "alias")
    os.symlink(array_dir, alias)
    state = plane.server.state_dir
    cases = {
        users: "holds 2 entries",
        array_dir: "overlaps array",
        vvols_dir: "overlaps array",
        os.path.join(vvols_dir, "pe"): "overlaps array",
        os.path.join(alias, "x"): "overlaps array",
        os.path.dirname(array_dir): "overlaps array",
        os.path.join(plane.tmp, "nfs"): "overlaps endpoint f0",
        os.path.join(plane.tmp, "nfs", "sub"): "overlaps endpoint f0",
        state: "overlaps",
        os.path.join(state, "pe", "x"): "overlaps",
        plane.tmp: "overlaps",
    }
    vvol_files = _tree(array_dir)
    for path, why in cases.items():
        err = plane.refused(4, "pe", "create", "f", "--protocol", "file", "--path", path)
        assert why in err, (path, err)
    assert [p["name"] for p in plane.api.pes()] == ["f0"]
    assert _tree(users) == before and _tree(array_dir) == vvol_files
    assert not os.path.exists(os.path.join(vvols_dir, "pe"))
    assert not os.path.exists(os.path.join(plane.tmp, "nfs", "sub"))


def test_file_endpoint_removes_only_what_it_made(plane: Plane, patterns: Patterns) -> None:
    nfs = os.path.join(plane.tmp, "nfs")
    plane.api.host_add("h1")
    plane.api.pe_create("f1", "file", path=nfs)
    plane.api.vvol_create("pool", "8M", name="d")
    handle = plane.api.bind_one("d", "h1", pe="f1")
    patterns.write(handle["path"], "d", [0, MiB])
    planted = _user_files(nfs)  # someone puts files and a directory in the endpoint's dir
    mine = os.path.basename(handle["path"])
    for restart in ("stop", "crash"):
        plane.restart(crash=restart == "crash")
        assert plane.api.audit()["ok"], plane.api.audit()
        assert _tree(nfs) == planted, restart
        assert plane.api.pe("f1")["alive"]
    patterns.check(handle["path"], "d", [0, MiB])
    # a file under a binding's name that vvhost did not make is neither replaced nor removed
    plane.api.vvol_create("pool", "8M", name="e")
    e_id = plane.api.vvol("e")["id"]
    squatter = os.path.join(nfs, f"{e_id}.h1")
    with open(squatter, "wb") as fh:
        fh.write(b"not a vvol\n")
    err = plane.refused(6, "vvol", "bind", "e", "--host", "h1", "--pe", "f1")
    assert "did not make it" in err
    with open(squatter, "rb") as fh:
        assert fh.read() == b"not a vvol\n"
    assert [b["vvol"] for b in plane.api.bindings()] == [plane.api.vvol("d")["id"]]
    # unbinding removes the link it made, and nothing else
    plane.api.unbind(["d"], "h1")
    after = _tree(nfs)
    assert mine not in after and {k: after[k] for k in planted if k != mine} == {
        k: v for k, v in planted.items() if k != mine
    }
    plane.restart()
    assert os.path.exists(squatter) and _tree(nfs) == after and plane.api.audit()["ok"]


# -- file endpoint: read-only means read-only ----------------------------------------------
@pytest.fixture(params=["ext4", "xfs"])
def fs_plane(request: pytest.FixtureRequest, tmp_path: str) -> Iterator[Plane]:
    base = str(tmp_path)
    if request.param == "xfs":
        base = os.path.join(request.getfixturevalue("xfs_mount"), os.path.basename(base))
        os.makedirs(base)
    server = ServerProcess(
        os.path.join(base, "state"), os.path.join(str(tmp_path), "s.sock"), private_tgtd=True
    ).start()
    p = Plane(server, server.client(), base)
    try:
        p.api.container_create("pool", "1G")
        yield p
    finally:
        p.api.close()
        p.server.stop()
        if base != str(tmp_path):
            shutil.rmtree(base, ignore_errors=True)


def test_snapshot_through_file_endpoint_is_read_only_for_root(
    fs_plane: Plane, patterns: Patterns
) -> None:
    plane = fs_plane
    plane.api.host_add("h1")
    plane.api.host_add("h2")
    plane.api.pe_create("f1", "file", path=os.path.join(plane.tmp, "nfs"))
    plane.api.pe_create("f2", "file", path=os.path.join(plane.tmp, "nfs2"))
    v = plane.api.vvol_create("pool", "8M", name="d")
    patterns.write(v["path"], "base", [0, 3 * MiB])
    snap = plane.api.vvol_snapshot("d", name="s1")
    data = plane.api.vvol(snap["id"])["path"]
    before = Patterns.sha(data)
    handle = plane.api.bind_one("s1", "h1", pe="f1")
    other = plane.api.bind_one("s1", "h2", pe="f2")
    assert handle["readonly"]
    assert os.geteuid() == 0  # root: modes do not stop it, only the immutable flag does
    for path in (handle["path"], other["path"], data):
        with pytest.raises(PermissionError):
            with open(path, "r+b") as fh:
                fh.write(b"overwritten")
        with pytest.raises(PermissionError):
            os.truncate(path, 0)
    assert Patterns.sha(handle["path"]) == Patterns.sha(data) == before
    patterns.check(handle["path"], "base", [0, 3 * MiB])
    assert handle["state"] == other["state"] == "active"
    assert [b["state"] for b in plane.api.bindings()] == ["active", "active"]
    plane.restart(crash=True)  # the flag survives a crash of the control plane
    assert is_immutable(data) and plane.api.audit()["ok"]
    plane.api.unbind(["s1"], "h1")
    assert is_immutable(data)  # h2 still has it read-only
    plane.api.unbind(["s1"], "h2")
    assert not is_immutable(data)
    assert Patterns.sha(data) == before
    plane.api.vvol_delete("s1")  # nothing left in the way of deleting the snapshot
    plane.api.vvol_delete("d")
    assert plane.api.audit()["ok"]


# -- iSCSI: a removed host keeps nothing -------------------------------------------------
@pytest.fixture
def iscsi_plane(plane: Plane) -> Plane:
    plane.api.pe_create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
    return plane


def _inq(iqn: str, handle: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """iscsi-inq as ``iqn`` with the CHAP account of ``handle``."""
    return run("iscsi-inq", "-i", iqn, "-e", "1", "-c", "128", authed(handle), ok=False)


def _targets_seen(iqn: str, handle: dict[str, Any]) -> str:
    return run("iscsi-ls", "-i", iqn, "-s", portal_url(handle), ok=False).stdout


def test_removed_host_keeps_no_iscsi_access(iscsi_plane: Plane, patterns: Patterns) -> None:
    plane = iscsi_plane
    plane.cli("tenant", "create", "other")
    assert plane.cli("host", "add", "kvmy", "--iqn", OLD_IQN).returncode == 0
    plane.api.vvol_create("pool", "16M", name="old")
    h = plane.api.bind_one("old", "kvmy", pe="iscsi1")
    assert _inq(OLD_IQN, h).returncode == 0
    plane.api.unbind(["old"], "kvmy")
    assert plane.cli("host", "remove", "kvmy").returncode == 0
    assert h["target"] not in _targets_seen(OLD_IQN, h)  # the target went too
    added = plane.cli("host", "add", "kvmy", "--tenant", "other", "--iqn", NEW_IQN)
    assert added.returncode == 0, added.stderr
    new = plane.api.vvol_create("pool", "16M", name="new")
    patterns.write(new["path"], "new", [0, MiB])
    h2 = plane.api.bind_one("new", "kvmy", pe="iscsi1")
    assert _inq(OLD_IQN, h2).returncode != 0  # the old initiator is refused
    assert h2["target"] not in _targets_seen(OLD_IQN, h2)
    assert _inq(NEW_IQN, h2).returncode == 0  # the new one is admitted
    read = run("qemu-img", "info", "--output=json", *image_opts(h2, NEW_IQN))
    assert '"virtual-size": 16777216' in read.stdout
    # a token rotation gives the host a new CHAP account: the old one is refused
    assert plane.cli("host", "token-rotate", "kvmy").returncode == 0
    assert _inq(NEW_IQN, h2).returncode != 0
    (h2,) = plane.api.bindings(host="kvmy")
    assert _inq(OLD_IQN, h2).returncode != 0 and _inq(NEW_IQN, h2).returncode == 0
    assert plane.api.audit()["ok"], plane.api.audit()
    # a host with bindings cannot be removed; its access stays as it was
    plane.refused(4, "host", "remove", "kvmy")
    assert _inq(NEW_IQN, h2).returncode == 0


def test_host_names_differing_in_case_get_separate_targets(iscsi_plane: Plane) -> None:
    plane = iscsi_plane
    plane.api.host_add("kvmy", OLD_IQN)
    plane.api.host_add("KVMY", NEW_IQN)
    plane.api.vvol_create("pool", "8M", name="a")
    plane.api.vvol_create("pool", "8M", name="b")
    lower = plane.api.bind_one("a", "kvmy", pe="iscsi1")
    upper = plane.api.bind_one("b", "KVMY", pe="iscsi1")
    assert lower["target"].lower() != upper["target"].lower()
    assert _inq(OLD_IQN, lower).returncode == 0 and _inq(NEW_IQN, lower).returncode != 0
    assert _inq(NEW_IQN, upper).returncode == 0 and _inq(OLD_IQN, upper).returncode != 0


def test_audit_reports_and_restart_repairs_a_foreign_acl(iscsi_plane: Plane) -> None:
    plane = iscsi_plane
    plane.api.host_add("h1", OLD_IQN)
    plane.api.vvol_create("pool", "8M", name="d")
    h = plane.api.bind_one("d", "h1", pe="iscsi1")
    port = int(plane.api.pe("iscsi1")["config"]["control_port"])
    tid = next(t.tid for t in plane.control(port).show() if t.iqn == h["target"])
    with pytest.raises(EndpointError, match="^tgtd: this target already exists$"):
        plane.control(port).target_new(tid, h["target"])  # status 9 read right
    with pytest.raises(EndpointError, match="^tgtd: this access control rule already exists$"):
        plane.control(port).bind_name(tid, OLD_IQN)  # status 12
    plane.control(port).bind_name(tid, NEW_IQN)  # someone widens the ACL behind vvhost's back
    assert _inq(NEW_IQN, h).returncode == 0
    report = plane.api.audit()
    assert not report["ok"] and any(NEW_IQN in p for p in report["problems"]), report
    audit = plane.cli("audit", "--json")
    assert NEW_IQN in audit.stdout
    plane.restart()  # reconciliation rewrites the ACL from the host row
    assert plane.api.audit()["ok"], plane.api.audit()
    assert _inq(NEW_IQN, h).returncode != 0 and _inq(OLD_IQN, h).returncode == 0


# -- tgtd: never drive a daemon vvhost did not start ----------------------------------------
def _foreign_tgtd(plane: Plane, port: int, portal: str) -> subprocess.Popen[bytes]:
    """A tgtd vvhost did not start, on control port ``port`` of the plane's /run/tgtd."""
    argv = plane.server.in_private_mounts(
        ["tgtd", "-f", "-C", str(port), "--iscsi", f"portal={portal}"]
    )
    log = open(os.path.join(plane.tmp, "foreign-tgtd.log"), "ab")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 20
    while not plane.control(port).ping():
        assert proc.poll() is None and time.monotonic() < deadline, "foreign tgtd did not start"
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()  # tgtd ignores SIGTERM
    proc.wait(10)


def _foreign_state(plane: Plane, port: int) -> str:
    return plane.control(port).ipc.request(MODE_TARGET, OP_SHOW)


def test_foreign_tgtd_on_the_control_port_is_never_driven(
    iscsi_plane: Plane, patterns: Patterns
) -> None:
    plane = iscsi_plane
    plane.api.host_add("h1", QEMU_IQN)
    plane.api.vvol_create("pool", "8M", name="d")
    plane.api.bind_one("d", "h1", pe="iscsi1")
    port = int(plane.api.pe("iscsi1")["config"]["control_port"])
    plane.api.close()
    plane.server.stop()  # vvhost and its tgtd are gone; someone else takes the port
    scratch = os.path.join(plane.tmp, "foreign.img")
    with open(scratch, "wb") as fh:
        fh.truncate(8 * MiB)
    patterns.write(scratch, "foreign", [0, 2 * MiB])
    before = Patterns.sha(scratch)
    foreign_portal = f"127.0.0.1:{free_port()}"
    foreign = _foreign_tgtd(plane, port, foreign_portal)
    try:
        tgt = plane.control(port)
        tgt.target_new(1, "iqn.2026-11.test.foreign:disk")
        tgt.lun_new(1, 1, scratch)
        tgt.bind_name(1, "iqn.2026-11.test.foreign:client")
        shown = _foreign_state(plane, port)
        plane.server = ServerProcess(
            plane.server.state_dir, plane.server.socket, private_tgtd=True
        ).start()
        plane.api = plane.server.client()
        pe = json.loads(plane.cli("pe", "show", "iscsi1", "--json").stdout)
        assert pe["alive"] is False
        assert f"held by another process (pid {foreign.pid})" in pe["error"], pe
        # binding through it is refused; the foreign daemon is never told anything
        plane.api.vvol_create("pool", "8M", name="e")
        err = plane.refused(6, "vvol", "bind", "e", "--host", "h1", "--pe", "iscsi1")
        assert f"pid {foreign.pid}" in err
        assert not plane.api.audit()["ok"]
        assert _foreign_state(plane, port) == shown  # its target, LUN and ACL as they were
        targets = parse_show(shown)
        assert [(t.iqn, [lun.path for lun in t.luns], t.initiator_names) for t in targets] == [
            ("iqn.2026-11.test.foreign:disk", [scratch], ["iqn.2026-11.test.foreign:client"])
        ]
        out = _targets_seen(QEMU_IQN, {"portal": foreign_portal})
        assert "vvhost" not in out  # nothing of vvhost's is exposed through it
        # a new endpoint picks a control port nobody holds
        plane.api.pe_create("iscsi2", "iscsi", portal=f"127.0.0.1:{free_port()}")
        assert int(plane.api.pe("iscsi2")["config"]["control_port"]) != port
        assert plane.api.pe("iscsi2")["alive"]
    finally:
        _stop(foreign)
    assert Patterns.sha(scratch) == before
    # once the port is free again, the next start brings the endpoint back
    plane.restart()
    assert plane.api.pe("iscsi1")["alive"] and plane.api.audit()["ok"], plane.api.audit()


def test_portal_held_by_another_process_is_not_alive(plane: Plane) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        portal = f"127.0.0.1:{squatter.getsockname()[1]}"
        err = plane.refused(6, "pe", "create", "i1", "--protocol", "iscsi", "--portal", portal)
        assert "held by another process" in err
        assert plane.api.pes() == []
        assert not any(os.path.exists(f"/proc/{p}") for p in _rundir_pids(plane))
    # an endpoint whose portal is taken while vvhost is down comes back not alive
    port = free_port()
    plane.api.pe_create("i2", "iscsi", portal=f"127.0.0.1:{port}")
    assert plane.api.pe("i2")["alive"]
    plane.api.close()
    plane.server.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        plane.server = ServerProcess(
            plane.server.state_dir, plane.server.socket, private_tgtd=True
        ).start()
        plane.api = plane.server.client()
        shown = plane.api.pe("i2")
        assert shown["alive"] is False and "held by another process" in shown["error"]
        assert not plane.api.audit()["ok"]


def _rundir_pids(plane: Plane) -> list[int]:
    pids = []
    for rundir in plane.server.endpoint_rundirs():
        try:
            with open(os.path.join(rundir, "pid")) as fh:
                pids.append(int(fh.read()))
        except FileNotFoundError:
            pass
    return pids


def test_overlap_is_seen_through_a_bind_mount(tmp_path: str) -> None:
    """Real paths differ, device and inode do not: a bind mount of an array's directory
    (made in a private mount namespace that ends with the check)."""
    array_dir = os.path.join(tmp_path, "array")
    alias = os.path.join(tmp_path, "alias")
    os.makedirs(os.path.join(array_dir, "vvols"))
    os.makedirs(alias)
    check = (
        "import sys; from vvhost.pe.paths import overlaps; a, b, c = sys.argv[1:]; "
        "print(overlaps(a, b), overlaps(a + '/vvols/new', b), overlaps(a, c))"
    )
    script = 'mount --bind "$1" "$2" && exec "$0" -c "$3" "$2" "$1" "$4"'
    out = run(
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        sys.executable,
        array_dir,
        alias,
        check,
        os.path.join(tmp_path, "other"),
    ).stdout.split()
    assert out == ["True", "True", "False"], out
