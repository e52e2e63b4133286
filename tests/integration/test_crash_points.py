"""kill -9 at every declared crash point (``vvhost.faults.points()``), one case each.

A point without a scenario here fails (coverage is enforced); the session ends
with "crash points covered: N of M" (tests/integration/conftest.py).

    control plane                             host side (one VM lab per mode, per module)
    ─────────────                             ────────────────────────────────────────────
    serve started with VVHOST_FAULT_AT=op:step  vvhost vm ... run with VVHOST_HOST_FAULT_AT
    the CLI command reaches the step            the CLI kills itself (SIGKILL) at the step
    serve waits there, the test kills -9 it     the next ``vvhost vm snapshots`` recovers
    (its endpoint daemons keep running)         then: snapshot, write, revert, see the data
    the next start adopts them and recovers     audit clean, no vvol of the VM left after
    then: audit clean, checksums, bind + read,  its delete
    snapshot again

Every scenario writes known patterns first and checks them after the recovery.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import libvirt
import pytest

from tests.crashing import crash_during
from tests.iscsiauth import authed
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
from vvhost.daemon import ServerProcess, free_port
from vvhost.faults import FAULT_ENV, FAULT_MARK, HOST_FAULT_ENV, FaultPoint
from vvhost.guest import GuestImage
from vvhost.host.vmdoc import VmDoc
from vvhost.units import parse_size

MiB = 1 << 20
QEMU_IQN = "iqn.2008-11.org.linux-kvm"  # h1's initiator: what qemu-img logs in as
OTHER_IQN = "iqn.2026-11.test.vvhost:other"


# -- control plane -------------------------------------------------------------------------


@dataclass
class Plane:
    """A control plane's state dir and socket; a ``vvhost serve`` is started per step
    (with a private tgtd, for the iSCSI endpoint)."""

    tmp: str
    state: str
    socket: str
    ids: dict[str, str] = field(default_factory=dict)

    def server(self, fault: str = "") -> ServerProcess:
        return ServerProcess(
            self.state, self.socket, env={FAULT_ENV: fault}, private_tgtd=True
        ).start()

    def endpoint_pids(self) -> dict[str, int]:
        """Endpoint run dir -> pid, for every endpoint daemon alive now."""
        pids = {}
        for rundir in ServerProcess(self.state, self.socket).endpoint_rundirs():
            try:
                with open(os.path.join(rundir, "pid")) as fh:
                    pid = int(fh.read())
            except (FileNotFoundError, ValueError):
                continue
            if os.path.exists(f"/proc/{pid}"):
                pids[rundir] = pid
        return pids

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
        crash_during(self.server, self.state, self.socket, fault, *cli_args)


@pytest.fixture
def plane(tmp_path: str, patterns: Patterns) -> Iterator[Plane]:
    """vvol d (A then B written, snapshot d@s1 holding A), vvol e (a full clone of
    d@s1), a second array and container, endpoints iscsi1, nbd1 and nbd2, hosts h1
    and h2."""
    p = Plane(str(tmp_path), os.path.join(tmp_path, "state"), os.path.join(tmp_path, "c.sock"))
    server = p.server()
    api = server.client()
    try:
        api.host_add("h1", QEMU_IQN)
        api.host_add("h2", OTHER_IQN)
        api.pe_create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
        api.pe_create("nbd1", "nbd")
        api.pe_create("nbd2", "nbd")
        api.container_create("pool", "1G")
        api.array_add("far", "dir", os.path.join(tmp_path, "far"))
        api.container_create("remote", "1G", arrays=["far"])
        api.container_create("near", "1G")  # on the default array, like pool
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


def served_sha(p: Plane, uri: str) -> str:
    """The sha256 of what an endpoint serves at ``uri`` (read by qemu-img as h1)."""
    out = os.path.join(p.tmp, "read.raw")
    try:
        done = subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return Patterns.sha(out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)


def served_size(uri: str) -> int:
    """The size a client connecting now is told."""
    done = subprocess.run(
        ["qemu-img", "info", "--output=json", uri], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["virtual-size"])


def read_through_binding(p: Plane, api: Client, vvol: str, pe: str) -> str:
    """Bind ``vvol`` for h1 on ``pe``, copy what the endpoint serves, unbind; its sha256."""
    handle = api.bind_one(vvol, "h1", pe=pe)
    try:
        return served_sha(p, handle["uri"])
    finally:
        api.unbind([vvol], "h1")


def vvol_names(api: Client) -> set[str]:
    return {v["name"] for v in api.vvols()}


# What each control-plane point runs, and what must hold after the restart.
CpCheck = Callable[[Plane, Client, Patterns], None]


def _unchanged(p: Plane, api: Client, patterns: Patterns) -> None:
    """The operation left no new vvol: d, d@s1, e as they were."""
    assert vvol_names(api) == {"d", "d@s1", "e"}
    assert api.vvol("d")["refs"] == 1 and api.vvol("d@s1")["refs"] == 0
    # d and e their size, d@s1 its unique bytes (see spacemodel.py)
    assert api.container("pool")["provisioned"] == 64 * MiB + api.vvol("d@s1")["charge"]
    assert patterns.sha(p.ids["path"]) == p.ids["sha_b"]


def _extended(p: Plane, api: Client, patterns: Patterns) -> None:
    """Finished forward; the endpoint daemons that kept serving d through the crash
    (adopted, not restarted) present the new size and the same data."""
    d = api.vvol("d")
    assert d["state"] == "ready" and d["size"] == 64 * MiB
    patterns.check(p.ids["path"], "A", [0])
    patterns.check(p.ids["path"], "B", [5 * CHUNK, 9 * CHUNK])
    handles = {b["pe"]: authed(b) for b in api.bindings(vvol="d")}  # h1: its CHAP account
    assert set(handles) == {"iscsi1", "nbd1"}, handles
    assert {pe: served_size(uri) for pe, uri in handles.items()} == {
        "iscsi1": 64 * MiB,
        "nbd1": 64 * MiB,
    }
    assert served_sha(p, handles["iscsi1"]) == patterns.sha(p.ids["path"])
    api.unbind(["d"], "h1")
    api.unbind(["d"], "h2")


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


def _relocated(p: Plane, api: Client, patterns: Patterns) -> None:
    """A move between two containers of one array is finished by recovery."""
    d = api.vvol("d")
    assert d["container"] == "near" and d["state"] == "ready"
    assert api.vvol("d@s1")["container"] == "near"
    assert patterns.sha(d["path"]) == p.ids["sha_b"]
    assert api.container("near")["provisioned"] == d["size"] + api.vvol("d@s1")["charge"]


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


def _fenced(p: Plane, api: Client, patterns: Patterns) -> None:
    """The fence finished at the restart: h1's target is gone (its LUN no longer
    serves), its binding fenced; unfence drops the binding, the data is intact."""
    (b,) = api.bindings(host="h1")
    assert b["state"] == "fenced"
    assert {h["name"]: h["state"] for h in api.hosts()}["h1"] == "fenced"
    refused = subprocess.run(["qemu-img", "info", authed(b)], capture_output=True, check=False)
    assert refused.returncode != 0
    assert api.host_unfence("h1")["bindings_dropped"] == 1
    assert api.bindings() == []
    assert patterns.sha(p.ids["path"]) == p.ids["sha_b"]


@dataclass(frozen=True)
class CpScenario:
    args: tuple[str, ...]
    check: CpCheck
    before: tuple[tuple[str, ...], ...] = ()  # CLI commands run before the faulty one
    journaled: bool = True  # the restart reports the operation it recovered


REVERT = ("vvol", "revert", "d", "--to", "d@s1")
EXTEND = ("vvol", "extend", "d", "--size", "64M")
BOUND_TWICE = (  # d served to two hosts by two daemons while it grows
    ("vvol", "bind", "d", "--host", "h1", "--pe", "iscsi1"),
    ("vvol", "bind", "d", "--host", "h2", "--pe", "nbd1"),
)
CP: dict[str, CpScenario] = {
    "create:file-created": CpScenario(
        ("vvol", "create", "--container", "pool", "--size", "8M"), _unchanged
    ),
    "snapshot:copied": CpScenario(("vvol", "snapshot", "d"), _unchanged),
    "clone:copied": CpScenario(("vvol", "clone", "d@s1", "--linked"), _unchanged),
    "extend:begin": CpScenario(EXTEND, _extended, before=BOUND_TWICE),
    # resized and journal closed; only the endpoints' refresh was left (done at start)
    "extend:resized": CpScenario(EXTEND, _extended, before=BOUND_TWICE, journaled=False),
    "delete:begin": CpScenario(("vvol", "delete", "d@s1"), _deleted_or_kept),
    "delete:file-removed": CpScenario(("vvol", "delete", "d@s1"), _deleted),
    # staged but not recorded: rolled back; once recorded, finished (also when swapped)
    "revert:staged": CpScenario(REVERT, _reverted_to("sha_b")),
    "revert:committed": CpScenario(REVERT, _reverted_to("sha_a")),
    "revert:replaced": CpScenario(REVERT, _reverted_to("sha_a")),
    "relocate:relocated": CpScenario(("vvol", "move", "d", "--container", "near"), _relocated),
    "move:copied": CpScenario(("vvol", "move", "d", "--container", "remote"), _not_moved),
    "copy-diffs:begin": CpScenario(
        ("vvol", "copy-diffs", "d", "--base", "d@s1", "--to", "e"), _copied_or_not
    ),
    "copy-diffs:copying": CpScenario(
        ("vvol", "copy-diffs", "d", "--base", "d@s1", "--to", "e"), _copied_or_not
    ),
    # a LUN made in tgtd but not recorded is removed; an NBD export likewise (rebind)
    "bind:attached": CpScenario(
        ("vvol", "bind", "d", "--host", "h1", "--pe", "iscsi1"), _binding([]), journaled=False
    ),
    "fence:marked": CpScenario(
        ("host", "fence", "h1"),
        _fenced,
        before=(("vvol", "bind", "d", "--host", "h1", "--pe", "iscsi1"),),
    ),
    "rebind:attached": CpScenario(
        ("vvol", "rebind", "d", "--host", "h1", "--pe", "nbd2"),
        _binding(["nbd1"]),
        before=(("vvol", "bind", "d", "--host", "h1", "--pe", "nbd1"),),
        journaled=False,
    ),
}


def run_control_plane_point(p: Plane, patterns: Patterns, point: FaultPoint) -> None:
    scenario = CP[point.name]
    if scenario.before:
        server = p.server()
        try:
            for args in scenario.before:
                out = p.cli(*args)
                assert out.returncode == 0, out.stderr
        finally:
            server.stop()
    p.crash_during(point.name, *scenario.args)
    serving = p.endpoint_pids()
    server = p.server()
    api = server.client()
    try:
        adopted = p.endpoint_pids()
        assert {d: adopted.get(d) for d in serving} == serving  # adopted, not restarted
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
        return [p["name"] for p in self.listing()["points"]]

    def listing(self) -> dict[str, Any]:
        return dict(vvhost_json(self.lab, "kvm1", "vm", "snapshots", self.name))

    def vvols(self) -> dict[str, dict[str, Any]]:
        """The VM's vvols (disks, points, layers, config) by id."""
        prefix = f"{self.name}."
        vvols = self.lab.api.vvols()
        return {v["id"]: v for v in vvols if (v["name"] or "").startswith(prefix)}

    def bound(self) -> set[str]:
        """The VM's vvols that are bound now."""
        mine = self.vvols()
        return {b["vvol"] for b in self.lab.api.bindings() if b["vvol"] in mine}

    def pending(self) -> dict[str, Any] | None:
        """The VM's unfinished operation, as its config document records it."""
        config = next(vid for vid, v in self.vvols().items() if v["name"].endswith(".config"))
        return VmDoc.load(self.lab.api, config).pending

    def no_orphans(self) -> None:
        """Every vvol of the VM belongs to its live chains or to one of its points."""
        vvols = self.vvols()
        config = next(vid for vid, v in vvols.items() if v["name"].endswith(".config"))
        doc = self.lab.api.config_get(config)
        owned = {config, *doc["disks"].values()}
        chains = [*doc["layers"].values()]
        chains += [c for p in doc["points"] for c in p["layers"].values()]
        owned |= {v for c in chains for v in c}
        assert set(vvols) == owned

    def state(self) -> int:
        conn = libvirt.open(self.lab.hosts["kvm1"].uri)
        try:
            return int(conn.lookupByName(self.name).state()[0])
        finally:
            conn.close()

    def block_jobs(self) -> list[str]:
        """The disks of the running VM with a block job still on them."""
        conn = libvirt.open(self.lab.hosts["kvm1"].uri)
        try:
            dom = conn.lookupByName(self.name)
            return [t for t in ("vda", "vdb") if dom.blockJobInfo(t, 0)]
        finally:
            conn.close()

    def write_b_and_stop(self) -> None:
        """Let the guest write B, stop it: the stop releases every binding of the VM."""
        go(self.channel, self.log, 1)
        wait_for_end(self.log)
        self.ok("vm", "stop", self.name, "--force")
        assert self.bound() == set()

    def finish_running(self) -> None:
        """Usable after recovery: a new point while it holds A, then B, then revert."""
        assert self.state() == libvirt.VIR_DOMAIN_RUNNING
        before = self.points()
        self.ok("vm", "snapshot", self.name, "again")
        self.write_b_and_stop()
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
        assert self.vvols() == {}
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
    vm.write_b_and_stop()
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
    listing = vm.listing()  # recovers
    # the guest already writes to the new layers: the point is kept and current
    assert [p["name"] for p in listing["points"]] == ["s1"] and listing["current"] == "s1"
    vm.no_orphans()
    vm.finish_running()  # the stop there releases the new layers too


def _redo_delete(vm: VmCase, point: FaultPoint) -> None:
    """Killed right after a merge: of a running VM (block commit), then of the stopped
    VM (qemu-img commit); either way the next command finishes the delete."""
    vm.ok("vm", "snapshot", vm.name, "s1")
    vm.killed_at(point.name, "vm", "snapshot-delete", vm.name, "s1")
    assert vm.points() == []
    vm.no_orphans()
    vm.ok("vm", "snapshot", vm.name, "again")
    vm.write_b_and_stop()
    see(vm.lab, vm.name, vm.log, "B", "A")
    vm.ok("vm", "revert", vm.name, "again")
    see(vm.lab, vm.name, vm.log, "A", "B")
    vm.killed_at(point.name, "vm", "snapshot-delete", vm.name, "again")
    assert vm.points() == []
    vm.no_orphans()
    see(vm.lab, vm.name, vm.log, "A", "B")
    vm.delete()


# move-storage step -> the disks that are in pool2 once the killed move is recovered:
# before the first pivot all go back, after it that disk goes on, after the commit all
MOVED_AFTER = {
    "points-copied": (),
    "mirror-ready": (),
    "pivoted": ("vda",),
    "committed": ("vda", "vdb", "config"),
}


def _move_storage(vm: VmCase, point: FaultPoint) -> None:
    assert {v["container"] for v in vm.vvols().values()} == {"pool"}
    vm.ok("vm", "snapshot", vm.name, "s1")
    vm.killed_at(point.name, "vm", "move-storage", vm.name, "--container", "pool2")
    assert (vm.pending() or {}).get("op") == "move-storage"
    assert vm.points() == ["s1"]  # the next command finishes it
    assert vm.pending() is None and vm.block_jobs() == []
    moved = MOVED_AFTER[point.step]
    names = {f"{vm.name}.{d}" for d in moved} | {f"{vm.name}.{d}@s1" for d in moved}
    names.discard(f"{vm.name}.config@s1")
    in_pool2 = {v["name"] for v in vm.vvols().values() if v["container"] == "pool2"}
    assert in_pool2 == names, in_pool2
    disks = vvhost_json(vm.lab, "kvm1", "vm", "show", vm.name)["disks"]
    assert vm.bound() == {d["vvol"] for d in disks}  # nothing half-copied left bound
    out = vm.vvhost("vm", "move-storage", vm.name, "--container", "pool2", "--json")
    if "vdb" in moved:
        assert out.returncode == 4 and "already in container pool2" in out.stderr, out.stderr
    else:
        assert out.returncode == 0, out.stderr
        rest = [d["target"] for d in json.loads(out.stdout)["disks"]]
        assert rest == [t for t in ("vda", "vdb") if t not in moved]
    assert {v["container"] for v in vm.vvols().values()} == {"pool2"}
    vm.write_b_and_stop()
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
    vm.write_b_and_stop()
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

        def remove_dirs() -> None:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)

        stack.callback(remove_dirs)

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
                # smaller than pool: the VMs' vvols are placed in pool (most free)
                lab.api.array_add("a2", "dir", dirs[-1])
                lab.api.container_create("pool2", "2G", arrays=["a2"])
                capacity = int(lab.api.datastore("ds")["capacity"]) + parse_size("2G")
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
