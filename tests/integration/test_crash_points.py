"""kill -9 at every declared crash point (``vvhost.faults.points()``), one case each.

A point without a scenario here fails (coverage is enforced); the session ends
with "crash points covered: N of M" (tests/integration/conftest.py).

    control plane                             host side (one VM lab per mode, per module)
    ─────────────                             ────────────────────────────────────────────
    serve started with VVHOST_FAULT_AT=op:step  vvhost vm ... run with VVHOST_HOST_FAULT_AT
    the CLI command reaches the step            the CLI kills itself (SIGKILL) at the step
    serve waits there, the test kills -9 it     the next ``vvhost vm snapshots`` recovers
    the next start recovers                     then: snapshot, write, revert, see the data
    then: audit clean, checksums, bind + read,  audit clean, no vvol of the VM left after
    snapshot again                              its delete

Every scenario writes known patterns first and checks them after the recovery.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import libvirt
import pytest

from tests.patterns import CHUNK, Patterns
from tests.vmlab import (
    Lab,
    add_go_channel,
    create_vm,
    go,
    running_lab,
    see,
    vvhost_json,
    wait_for_end,
    wait_line,
    write_all,
)
from vvhost import faults
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.faults import FAULT_ENV, FAULT_MARK, HOST_FAULT_ENV, FaultPoint
from vvhost.guest import GuestImage
from vvhost.units import parse_size

MiB = 1 << 20
QEMU_IQN = "iqn.2008-11.org.linux-kvm"


# -- control plane -------------------------------------------------------------------------


@dataclass
class Plane:
    """A control plane's state dir and socket; a ``vvhost serve`` is started per step."""

    tmp: str
    state: str
    socket: str
    ids: dict[str, str] = field(default_factory=dict)

    def server(self, fault: str = "") -> ServerProcess:
        return ServerProcess(self.state, self.socket, env={FAULT_ENV: fault}).start()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vvhost", "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def crash_during(self, fault: str, *cli_args: str) -> None:
        """Run ``vvhost CLI_ARGS`` against a daemon that stops at ``fault``; kill -9 it there."""
        mark = os.path.join(self.state, FAULT_MARK)
        if os.path.exists(mark):
            os.unlink(mark)
        server = self.server(fault)
        cmd = subprocess.Popen(
            [sys.executable, "-m", "vvhost", "--socket", self.socket, *cli_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(mark):
                assert cmd.poll() is None, cmd.communicate()
                assert time.monotonic() < deadline, "fault point never reached"
                time.sleep(0.05)
            server.kill()
            _out, err = cmd.communicate(timeout=30)
            assert cmd.returncode == 7, err  # the client saw the control plane go away
            assert err.count(b"\n") == 1 and err.startswith(b"vvhost: error: ")
        finally:
            server.kill()
            if cmd.poll() is None:
                cmd.kill()
                cmd.wait()
            os.path.exists(mark) and os.unlink(mark)


@pytest.fixture
def plane(tmp_path: str, patterns: Patterns) -> Iterator[Plane]:
    """vvol d (A then B written, snapshot d@s1 holding A), vvol e (a full clone of
    d@s1), a second array and container, NBD endpoints nbd1 and nbd2, host h1."""
    p = Plane(str(tmp_path), os.path.join(tmp_path, "state"), os.path.join(tmp_path, "c.sock"))
    server = p.server()
    api = server.client()
    try:
        api.host_add("h1", QEMU_IQN)
        api.pe_create("nbd1", "nbd")
        api.pe_create("nbd2", "nbd")
        api.container_create("pool", "1G")
        api.array_add("far", "dir", os.path.join(tmp_path, "far"))
        api.container_create("remote", "1G", arrays=["far"])
        v = api.vvol_create("pool", "32M", name="d")
        patterns.write(v["path"], "A", [0, 5 * CHUNK])
        s1 = api.vvol_snapshot("d", name="d@s1")
        patterns.write(v["path"], "B", [5 * CHUNK, 9 * CHUNK])
        e = api.vvol_clone("d@s1", name="e")
        p.ids = {
            "d": v["id"],
            "path": v["path"],
            "s1": s1["id"],
            "e": e["id"],
            "e_path": e["path"],
            "sha_a": patterns.sha(s1["path"]),
            "sha_b": patterns.sha(v["path"]),
        }
    finally:
        api.close()
        server.stop()
    try:
        yield p
    finally:
        ServerProcess(p.state, p.socket).stop_endpoint_daemons()


def read_through_binding(p: Plane, api: Client, vvol: str, pe: str) -> str:
    """Bind ``vvol`` for h1 on ``pe``, copy what the endpoint serves, unbind; its sha256."""
    handle = api.bind_one(vvol, "h1", pe=pe)
    out = os.path.join(p.tmp, "read.raw")
    try:
        done = subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "raw", handle["uri"], out],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return Patterns.sha(out)
    finally:
        os.path.exists(out) and os.unlink(out)
        api.unbind([vvol], "h1")


def vvol_names(api: Client) -> set[str]:
    return {v["name"] for v in api.vvols()}


# What each control-plane point runs, and what must hold after the restart.
CpCheck = Callable[[Plane, Client, Patterns], None]


def _unchanged(p: Plane, api: Client, patterns: Patterns) -> None:
    """The operation left no new vvol: d, d@s1, e as they were."""
    assert vvol_names(api) == {"d", "d@s1", "e"}
    assert api.vvol("d")["refs"] == 1 and api.vvol("d@s1")["refs"] == 0
    assert api.container("pool")["provisioned"] == 96 * MiB
    assert patterns.sha(p.ids["path"]) == p.ids["sha_b"]


def _extended(p: Plane, api: Client, patterns: Patterns) -> None:
    d = api.vvol("d")
    assert d["state"] == "ready" and d["size"] == 64 * MiB  # finished forward
    patterns.check(p.ids["path"], "A", [0])
    patterns.check(p.ids["path"], "B", [5 * CHUNK, 9 * CHUNK])


def _deleted_or_kept(p: Plane, api: Client, patterns: Patterns) -> None:
    """Before the file went, back (d@s1 kept); after it, forward (gone)."""
    names = vvol_names(api)
    assert names in ({"d", "d@s1", "e"}, {"d", "e"}), names
    if "d@s1" in names:
        assert patterns.sha(api.vvol("d@s1")["path"]) == p.ids["sha_a"]
    assert patterns.sha(p.ids["path"]) == p.ids["sha_b"]


def _deleted(p: Plane, api: Client, patterns: Patterns) -> None:
    assert vvol_names(api) == {"d", "e"} and api.vvol("d")["refs"] == 0
    assert patterns.sha(p.ids["path"]) == p.ids["sha_b"]


def _reverted_to(expect: str) -> CpCheck:
    def check(p: Plane, api: Client, patterns: Patterns) -> None:
        d = api.vvol("d")
        assert d["state"] == "ready" and d["snapshots"] == [p.ids["s1"]]  # no safety left
        assert patterns.sha(p.ids["path"]) == p.ids[expect]
        api.vvol_revert("d", "d@s1")  # and it still works
        assert patterns.sha(p.ids["path"]) == p.ids["sha_a"]
        p.ids["sha_b"] = p.ids["sha_a"]  # what d holds now, for the checks that follow

    return check


def _not_moved(p: Plane, api: Client, patterns: Patterns) -> None:
    d = api.vvol("d")
    assert d["container"] == "pool" and d["path"] == p.ids["path"]
    assert patterns.sha(p.ids["path"]) == p.ids["sha_b"]
    assert api.container("remote")["provisioned"] == 0
    assert os.listdir(os.path.join(p.tmp, "far", "vvols")) == []


def _copied_or_not(p: Plane, api: Client, patterns: Patterns) -> None:
    assert api.vvol("e")["state"] == "ready"
    assert patterns.sha(p.ids["e_path"]) in (p.ids["sha_a"], p.ids["sha_b"])
    assert p.cli("vvol", "copy-diffs", "d", "--base", "d@s1", "--to", "e").returncode == 0
    assert patterns.sha(p.ids["e_path"]) == p.ids["sha_b"]


def _binding(expected: list[str]) -> CpCheck:
    def check(p: Plane, api: Client, patterns: Patterns) -> None:
        assert [b["pe"] for b in api.bindings()] == expected
        if expected:
            api.unbind(["d"], "h1")
        assert patterns.sha(p.ids["path"]) == p.ids["sha_b"]

    return check


@dataclass(frozen=True)
class CpScenario:
    args: tuple[str, ...]
    check: CpCheck
    before: tuple[str, ...] = ()  # a CLI command run before the faulty one
    journaled: bool = True  # the restart reports the operation it recovered


REVERT = ("vvol", "revert", "d", "--to", "d@s1")
CP: dict[str, CpScenario] = {
    "create:file-created": CpScenario(
        ("vvol", "create", "--container", "pool", "--size", "8M"), _unchanged
    ),
    "snapshot:copied": CpScenario(("vvol", "snapshot", "d"), _unchanged),
    "clone:copied": CpScenario(("vvol", "clone", "d@s1", "--linked"), _unchanged),
    "extend:begin": CpScenario(("vvol", "extend", "d", "--size", "64M"), _extended),
    # resized and journal closed; only the endpoints' refresh was left (done at start)
    "extend:resized": CpScenario(
        ("vvol", "extend", "d", "--size", "64M"), _extended, journaled=False
    ),
    "delete:begin": CpScenario(("vvol", "delete", "d@s1"), _deleted_or_kept),
    "delete:file-removed": CpScenario(("vvol", "delete", "d@s1"), _deleted),
    # staged but not recorded: rolled back; once recorded, finished (also when swapped)
    "revert:staged": CpScenario(REVERT, _reverted_to("sha_b")),
    "revert:committed": CpScenario(REVERT, _reverted_to("sha_a")),
    "revert:replaced": CpScenario(REVERT, _reverted_to("sha_a")),
    "move:copied": CpScenario(("vvol", "move", "d", "--container", "remote"), _not_moved),
    "copy-diffs:begin": CpScenario(
        ("vvol", "copy-diffs", "d", "--base", "d@s1", "--to", "e"), _copied_or_not
    ),
    "bind:attached": CpScenario(
        ("vvol", "bind", "d", "--host", "h1", "--pe", "nbd1"), _binding([]), journaled=False
    ),
    "rebind:attached": CpScenario(
        ("vvol", "rebind", "d", "--host", "h1", "--pe", "nbd2"),
        _binding(["nbd1"]),
        before=("vvol", "bind", "d", "--host", "h1", "--pe", "nbd1"),
        journaled=False,
    ),
}


def run_control_plane_point(p: Plane, patterns: Patterns, point: FaultPoint) -> None:
    scenario = CP[point.name]
    if scenario.before:
        server = p.server()
        try:
            assert p.cli(*scenario.before).returncode == 0
        finally:
            server.stop()
    p.crash_during(point.name, *scenario.args)
    server = p.server()
    api = server.client()
    try:
        if scenario.journaled:
            assert api.health()["recovered"], "the restart recovered nothing"
        report = api.audit()
        assert report["ok"], report["problems"]  # nothing orphaned
        scenario.check(p, api, patterns)
        # usable: bound and read through an endpoint, snapshotted again
        assert read_through_binding(p, api, "d", "nbd2") == patterns.sha(api.vvol("d")["path"])
        assert api.vvol_snapshot("d", name="d@again")["state"] == "ready"
        report = api.audit()
        assert report["ok"], report["problems"]
    finally:
        api.close()
        server.stop()


# -- host side -----------------------------------------------------------------------------


@dataclass
class VmCase:
    """One VM of a lab: it wrote A and waits (``go`` lets it write B)."""

    lab: Lab
    name: str
    log: str
    channel: str

    def vvhost(self, *args: str, fault: str = "") -> subprocess.CompletedProcess[str]:
        return self.lab.vvhost("kvm1", *args, env={HOST_FAULT_ENV: fault})

    def ok(self, *args: str) -> None:
        out = self.vvhost(*args)
        assert out.returncode == 0, out.stderr

    def killed_at(self, fault: str, *args: str) -> None:
        out = self.vvhost(*args, fault=fault)
        assert out.returncode == -signal.SIGKILL, (out.returncode, out.stderr)

    def points(self) -> list[str]:
        """The VM's snapshot points (this command also recovers a killed operation)."""
        listing = vvhost_json(self.lab, "kvm1", "vm", "snapshots", self.name)
        return [p["name"] for p in listing["points"]]

    def state(self) -> int:
        conn = libvirt.open(self.lab.hosts["kvm1"].uri)
        try:
            return int(conn.lookupByName(self.name).state()[0])
        finally:
            conn.close()

    def finish_running(self) -> None:
        """Usable after recovery: a new point while it holds A, then B, then revert."""
        assert self.state() == libvirt.VIR_DOMAIN_RUNNING
        before = self.points()
        self.ok("vm", "snapshot", self.name, "again")
        go(self.channel, self.log, 1)
        wait_for_end(self.log)
        self.ok("vm", "stop", self.name, "--force")
        self.finish_stopped(before)

    def finish_stopped(self, older: list[str]) -> None:
        """It holds B; each point taken at A reverts to A."""
        see(self.lab, self.name, self.log, "B", "A")
        for point in ["again", *older]:
            self.ok("vm", "revert", self.name, point)
            see(self.lab, self.name, self.log, "A", "B")
        self.delete()

    def delete(self) -> None:
        self.ok("vm", "delete", self.name)
        left = [v["name"] for v in self.lab.api.vvols() if v["name"].startswith(f"{self.name}.")]
        assert left == []
        report = self.lab.api.audit()
        assert report["ok"], report["problems"]


def new_vm(lab: Lab, name: str) -> VmCase:
    log = create_vm(
        lab, name, "iscsi", write_all("A") + ["wait"] + write_all("B"), keep_running=True
    )
    case = VmCase(lab, name, log, add_go_channel(lab, "kvm1", name))
    case.ok("vm", "start", name)
    wait_line(log, "wait 1")
    return case


def _vm_snapshot(vm: VmCase, point: FaultPoint) -> None:
    vm.killed_at(point.name, "vm", "snapshot", vm.name, "s1")
    assert vm.points() == []  # the half-taken snapshot is dropped, the guest resumed
    vm.finish_running()


def _vm_revert(vm: VmCase, point: FaultPoint) -> None:
    vm.ok("vm", "snapshot", vm.name, "s1")
    go(vm.channel, vm.log, 1)
    wait_for_end(vm.log)
    vm.ok("vm", "stop", vm.name, "--force")
    vm.killed_at(point.name, "vm", "revert", vm.name, "s1")
    assert vm.points() == ["s1"]  # back where it was, safety point gone
    assert not any("@safety-" in v["name"] for v in vm.lab.api.vvols())
    assert vm.lab.api.bindings() == []
    see(vm.lab, vm.name, vm.log, "B", "A")
    vm.ok("vm", "revert", vm.name, "s1")
    see(vm.lab, vm.name, vm.log, "A", "B")
    vm.delete()


def _vm_lease(vm: VmCase, point: FaultPoint) -> None:
    """Killed holding the VM's lease, before any work: the next command of this host
    takes the lease over at once (its owner's process is gone) and works."""
    vm.killed_at(point.name, "vm", "snapshot", vm.name, "s1")
    assert vm.points() == []
    vm.finish_running()


def _redo_snapshot(vm: VmCase, point: FaultPoint) -> None:
    vm.killed_at(point.name, "vm", "snapshot", vm.name, "s1")
    assert vm.points() == ["s1"]  # the guest already writes to the new layers: kept
    vm.finish_running()


def _redo_delete(vm: VmCase, point: FaultPoint) -> None:
    vm.ok("vm", "snapshot", vm.name, "s1")
    vm.killed_at(point.name, "vm", "snapshot-delete", vm.name, "s1")
    assert vm.points() == []  # merged: the delete is finished
    vm.finish_running()


def _move_storage(vm: VmCase, point: FaultPoint) -> None:
    vm.ok("vm", "snapshot", vm.name, "s1")
    vm.killed_at(point.name, "vm", "move-storage", vm.name, "--container", "pool2")
    assert vm.points() == ["s1"]
    out = vm.vvhost("vm", "move-storage", vm.name, "--container", "pool2")
    assert out.returncode == 0 or (out.returncode == 4 and "already" in out.stderr), out.stderr
    containers = {v["container"] for v in vm.lab.api.vvols() if v["name"].startswith(vm.name)}
    assert containers == {"pool2"}
    go(vm.channel, vm.log, 1)
    wait_for_end(vm.log)
    vm.ok("vm", "stop", vm.name, "--force")
    see(vm.lab, vm.name, vm.log, "B", "A")
    vm.ok("vm", "revert", vm.name, "s1")
    see(vm.lab, vm.name, vm.log, "A", "B")
    vm.delete()


def _snapshot_group(vm: VmCase, point: FaultPoint) -> None:
    """The control plane killed -9 while committing a running VM's snapshot group."""
    lab = vm.lab
    state, sock = lab.server.state_dir, lab.server.socket
    lab.api.close()
    lab.server.kill()  # endpoint daemons keep serving the running guest
    faulty = ServerProcess(state, sock, env={FAULT_ENV: point.name}, private_tgtd=True).start()
    mark = os.path.join(state, FAULT_MARK)
    env = {**os.environ, "VVHOST_HOST_CONF": lab.confs["kvm1"]}
    cmd = subprocess.Popen(
        [sys.executable, "-m", "vvhost", "vm", "snapshot", vm.name, "s1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(mark):
            assert cmd.poll() is None, cmd.communicate()
            assert time.monotonic() < deadline, "fault point never reached"
            time.sleep(0.05)
        faulty.kill()
        _out, err = cmd.communicate(timeout=60)
        assert cmd.returncode != 0 and err.count(b"\n") == 1, err
    finally:
        faulty.kill()
        if cmd.poll() is None:
            cmd.kill()
            cmd.wait()
        os.unlink(mark)
        lab.server.start()  # the same object: the lab's teardown stops this process
        lab.api = lab.server.client()
    report = lab.api.audit()
    assert report["ok"], report["problems"]
    older = vm.points()  # s1 finished forward, or dropped: either way whole
    assert older in ([], ["s1"]), older
    assert vm.state() == libvirt.VIR_DOMAIN_RUNNING
    vm.ok("vm", "snapshot", vm.name, "again")
    go(vm.channel, vm.log, 1)
    wait_for_end(vm.log)
    vm.ok("vm", "stop", vm.name, "--force")
    vm.finish_stopped(older)


HostRun = Callable[[VmCase, FaultPoint], None]

# op -> (lab mode, scenario); the step is passed on, so a new step of a known op is covered
HOST: dict[str, tuple[str, HostRun]] = {
    "vm-snapshot": ("cow", _vm_snapshot),
    "vm-revert": ("cow", _vm_revert),
    "vm-lease": ("cow", _vm_lease),
    "move-storage": ("cow", _move_storage),
    "snapshot-group": ("cow", _snapshot_group),  # a control-plane point reached by a VM
    "redo-snapshot": ("redo", _redo_snapshot),
    "redo-delete": ("redo", _redo_delete),
}


@pytest.fixture(scope="module")
def labs(
    tmp_path_factory: pytest.TempPathFactory, guest: GuestImage, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Lab]]:
    """One VM lab per snapshot mode, started when first asked for, for the whole module:
    ``cow`` has its arrays on XFS (reflink, a second container pool2 for moves),
    ``redo`` on ext4 (qcow2 layers)."""
    made: dict[str, Lab] = {}
    dirs: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [shutil.rmtree(d, ignore_errors=True) for d in dirs])

        def get(mode: str) -> Lab:
            if mode in made:
                return made[mode]
            array_dir = None
            if mode == "cow":
                mnt = request.getfixturevalue("xfs_mount")
                dirs.extend([tempfile.mkdtemp(dir=mnt), tempfile.mkdtemp(dir=mnt)])
                array_dir = dirs[-2]
            tmp = str(tmp_path_factory.mktemp(mode))
            lab = made[mode] = stack.enter_context(running_lab(tmp, guest, array_dir))
            if mode == "cow":
                lab.api.array_add("a2", "dir", dirs[-1])
                lab.api.container_create("pool2", "4G", arrays=["a2"])
                capacity = int(lab.api.datastore("ds")["capacity"]) + parse_size("4G")
                lab.api.datastore_extend("ds", capacity)
            return lab

        yield get


# -- the one test ----------------------------------------------------------------------------


def _scenario_of(point: FaultPoint) -> str | None:
    if point.op in HOST:
        return "host"
    if point.side == faults.CONTROL_PLANE and point.name in CP:
        return "control-plane"
    return None


@pytest.mark.parametrize("point", faults.points(), ids=lambda p: f"{p.side}:{p.name}")
def test_crash_point(point: FaultPoint, request: pytest.FixtureRequest) -> None:
    kind = _scenario_of(point)
    if kind is None:
        pytest.fail(f"crash point {point.name} ({point.side}) has no scenario in {__name__}")
    if kind == "control-plane":
        run_control_plane_point(
            request.getfixturevalue("plane"), request.getfixturevalue("patterns"), point
        )
        return
    mode, run = HOST[point.op]
    lab = request.getfixturevalue("labs")(mode)
    vm = new_vm(lab, f"c{faults.points().index(point)}")
    run(vm, point)
