"""Extending a bound vvol: the endpoint daemons (tgtd, qemu-storage-daemon) present the
new size, and a QEMU that has the binding open takes it with ``block_resize``.

The "VM" is a QEMU with no guest (``-machine none``) and one disk on the binding,
driven over QMP: I/O with ``qemu-io`` through HMP, ``block_resize`` and
``query-named-block-nodes``, exactly what a VM's QEMU does with its disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.iscsiauth import authed, portal_url
from tests.runner import run
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port
from vvhost.tools import EndpointError
from vvhost.tools.qmp import Qmp

QEMU_IQN = "iqn.2008-11.org.linux-kvm"  # h1's initiator: what qemu-img/qemu-io log in as
OTHER_IQN = "iqn.2026-11.test.vvhost:other"
MiB = 1 << 20
OLD, NEW = 64 * MiB, 96 * MiB


@dataclass
class Plane:
    server: ServerProcess
    api: Client
    tmp: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(sys.executable, "-m", "vvhost", "--socket", self.server.socket, *args, ok=False)

    def start(self, env: dict[str, str] | None = None) -> None:
        self.server = ServerProcess(
            self.server.state_dir, self.server.socket, env=env, private_tgtd=True
        ).start()
        self.api = self.server.client()


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
        p.api.pe_create("file1", "file", path=os.path.join(tmp_path, "nfs"))
        p.api.container_create("pool", "1G")
        yield p
    finally:
        p.api.close()
        p.server.stop()
    for rundir in p.server.endpoint_rundirs():
        assert not os.path.exists(os.path.join(rundir, "pid")), f"{rundir} left a daemon"


def blockdev(handle: dict[str, Any]) -> dict[str, Any]:
    """The QEMU protocol node that opens a binding's handle."""
    if handle["protocol"] == "iscsi":
        return {
            "driver": "iscsi",
            "transport": "tcp",
            "portal": handle["portal"],
            "target": handle["target"],
            "lun": handle["lun"],
            "initiator-name": handle["initiator"],
            **(
                {"user": handle["chap_user"], "password-secret": "chap0"}
                if handle.get("chap_user")
                else {}
            ),
        }
    if handle["protocol"] == "nbd":
        return {
            "driver": "nbd",
            "server": {"type": "unix", "path": handle["socket"]},
            "export": handle["export"],
        }
    return {"driver": "file", "filename": handle["path"], "locking": "off"}


class Vm:
    """A QEMU process (no guest) whose raw disk ``disk`` sits on a binding."""

    def __init__(self, tmp: str, handle: dict[str, Any]) -> None:
        name = uuid.uuid4().hex[:8]
        self.qmp_path = os.path.join(tmp, f"vm-{name}.qmp")
        self.log_path = os.path.join(tmp, f"vm-{name}.log")
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            *(  # the CHAP secret the iSCSI node names
                ["-object", f"secret,id=chap0,data={handle['chap_secret']}"]
                if handle.get("chap_secret")
                else []
            ),
            "-blockdev",
            json.dumps({**blockdev(handle), "node-name": "proto"}),
            "-blockdev",
            json.dumps({"driver": "raw", "node-name": "disk", "file": "proto"}),
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.qmp = Qmp(self.qmp_path)
        try:
            self.qmp.connect(retry_for=15)
        except BaseException:
            self.stop()
            raise

    def io(self, command: str) -> str:
        """Run a qemu-io command on ``disk`` inside this QEMU (HMP ``qemu-io``, which
        prints its result on QEMU's stdout: our log) and return what it printed."""
        start = os.path.getsize(self.log_path)
        self.qmp.cmd("human-monitor-command", **{"command-line": f'qemu-io disk "{command}"'})
        deadline = time.monotonic() + 10
        while True:
            with open(self.log_path, errors="replace") as fh:
                fh.seek(start)
                out = fh.read()
            if out.endswith("\n") or time.monotonic() > deadline:
                return out
            time.sleep(0.02)

    def write(self, pattern: int, offset: int, length: int) -> None:
        out = self.io(f"write -P {pattern:#x} {offset} {length}")
        assert f"wrote {length}/{length} bytes" in out, out

    def verify(self, pattern: int, offset: int, length: int) -> None:
        out = self.io(f"read -P {pattern:#x} {offset} {length}")
        assert f"read {length}/{length} bytes" in out and "failed" not in out, out

    def size(self) -> int:
        nodes = self.qmp.cmd("query-named-block-nodes")
        return int(next(n for n in nodes if n["node-name"] == "disk")["image"]["virtual-size"])

    def resize(self, size: int) -> None:
        self.qmp.cmd("block_resize", **{"node-name": "disk", "size": size})

    def stop(self) -> None:
        self.qmp.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def vms(plane: Plane) -> Iterator[list[Vm]]:
    started: list[Vm] = []
    try:
        yield started
    finally:
        for vm in started:
            vm.stop()
        assert all(vm.proc.poll() is not None for vm in started)


def start_vm(vms: list[Vm], plane: Plane, handle: dict[str, Any]) -> Vm:
    vm = Vm(plane.tmp, handle)
    vms.append(vm)
    return vm


def fresh_size(handle: dict[str, Any]) -> int:
    """The size a client connecting now is told (iSCSI logs in as h1's initiator)."""
    if handle["protocol"] == "file":
        return os.path.getsize(handle["path"])
    info = run("qemu-img", "info", "--output=json", authed(handle)).stdout
    return int(json.loads(info)["virtual-size"])


def gone(handle: dict[str, Any]) -> bool:
    """Is the handle's LUN / export / file really gone from its endpoint?"""
    if handle["protocol"] == "iscsi":
        out = run("iscsi-ls", "-i", QEMU_IQN, "-s", portal_url(handle)).stdout
        return f"Lun:{handle['lun']} " not in out
    if handle["protocol"] == "nbd":
        out = run("nbdinfo", "--list", f"nbd+unix:///?socket={handle['socket']}", ok=False).stdout
        return str(handle["export"]) not in out
    return not os.path.lexists(str(handle["path"]))


def extend_cli(plane: Plane, size: str) -> subprocess.CompletedProcess[str]:
    return plane.cli("vvol", "extend", "d", "--size", size, "--json")


def check_grown_data(vm: Vm) -> None:
    """Old data (start and last MiB of the old size) reads back; past the old end is
    writable and reads back."""
    vm.verify(0x5A, 1 * MiB, 2 * MiB)
    vm.verify(0x3C, OLD - MiB, MiB)
    vm.verify(0, OLD, MiB)  # the new part starts as zeros
    vm.write(0xA5, OLD + 8 * MiB, 4 * MiB)
    vm.verify(0xA5, OLD + 8 * MiB, 4 * MiB)
    vm.write(0x77, NEW - MiB, MiB)
    vm.verify(0x77, NEW - MiB, MiB)


def finish(plane: Plane, handle: dict[str, Any]) -> None:
    """Audit is clean; unbinding leaves no LUN, export or file behind."""
    report = plane.api.audit()
    assert report["ok"], report["problems"]
    plane.api.unbind(["d"], "h1")
    assert gone(handle)
    assert plane.api.bindings() == []
    report = plane.api.audit()
    assert report["ok"], report["problems"]


@pytest.mark.parametrize("pe", ["iscsi1", "file1"])
def test_open_disk_grows_through_the_same_connection(plane: Plane, vms: list[Vm], pe: str) -> None:
    v = plane.api.vvol_create("pool", "64M", name="d")
    handle = plane.api.bind_one("d", "h1", pe=pe)
    vm = start_vm(vms, plane, handle)
    vm.write(0x5A, 1 * MiB, 2 * MiB)
    vm.write(0x3C, OLD - MiB, MiB)

    out = extend_cli(plane, "96M")
    assert out.returncode == 0, out.stderr
    grown = json.loads(out.stdout)
    assert grown["id"] == v["id"] and grown["size"] == NEW
    assert grown["generation"] == v["generation"] + 1 and grown["state"] == "ready"

    assert vm.size() == OLD  # QEMU asks again only when told to
    vm.resize(NEW)  # what libvirt's virDomainBlockResize does
    assert vm.size() == NEW
    check_grown_data(vm)
    assert fresh_size(handle) == NEW

    (binding,) = plane.api.bindings(vvol="d")
    assert binding["uri"] == handle["uri"] and binding["secondary_id"] == handle["secondary_id"]
    if pe == "iscsi1":  # same target and LUN, same identity
        assert (binding["target"], binding["lun"]) == (handle["target"], handle["lun"])
        assert binding["serial"] == handle["serial"]
        vpd80 = run("iscsi-inq", "-i", QEMU_IQN, "-e", "1", "-c", "128", authed(handle)).stdout
        assert v["id"].replace("-", "") in vpd80
    vm.stop()
    vms.remove(vm)
    finish(plane, handle)


def test_nbd_export_grows_once_its_clients_are_gone(plane: Plane, vms: list[Vm]) -> None:
    """QEMU cannot grow an NBD export in use, and its NBD client learns a size only
    when it connects: a connected client keeps the old size, the extend says so, and
    extending again to the same size once the client is gone re-exports the vvol."""
    plane.api.vvol_create("pool", "64M", name="d")
    handle = plane.api.bind_one("d", "h1", pe="nbd1")
    vm = start_vm(vms, plane, handle)
    vm.write(0x5A, 1 * MiB, 2 * MiB)
    vm.write(0x3C, OLD - MiB, MiB)

    out = extend_cli(plane, "96M")
    assert out.returncode != 0 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("vvhost: error: vvol 'd' was extended to 100663296 bytes")
    assert "nbd1 for host h1" in out.stderr and "connected client" in out.stderr
    assert plane.api.vvol("d")["size"] == NEW and plane.api.vvol("d")["state"] == "ready"
    assert plane.api.audit()["ok"]
    vm.verify(0x5A, 1 * MiB, 2 * MiB)  # the client was not cut off
    with pytest.raises(EndpointError, match="Cannot grow NBD nodes"):
        vm.resize(NEW)
    vm.stop()
    vms.remove(vm)

    out = extend_cli(plane, "96M")  # same size: only the endpoints are refreshed
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["size"] == NEW
    assert fresh_size(handle) == NEW
    vm = start_vm(vms, plane, handle)
    assert vm.size() == NEW
    check_grown_data(vm)
    vm.stop()
    vms.remove(vm)
    finish(plane, handle)


def test_every_binding_of_the_vvol_is_refreshed(plane: Plane, vms: list[Vm]) -> None:
    """Bound for two hosts at once (iSCSI, and NBD without a client): both grow."""
    plane.api.vvol_create("pool", "64M", name="d")
    lun = plane.api.bind_one("d", "h1", pe="iscsi1")
    export = plane.api.bind_one("d", "h2", pe="nbd1")
    vm = start_vm(vms, plane, lun)
    vm.write(0x5A, 1 * MiB, 2 * MiB)
    vm.write(0x3C, OLD - MiB, MiB)
    assert plane.api.vvol_extend("d", "96M")["size"] == NEW
    assert fresh_size(lun) == NEW and fresh_size(export) == NEW
    vm.resize(NEW)
    check_grown_data(vm)
    out = run(
        "qemu-io", "-f", "raw", "-c", f"read -P 0xa5 {OLD + 8 * MiB} {4 * MiB}", export["uri"]
    )
    assert "read 4194304/4194304" in out.stdout
    vm.stop()
    vms.remove(vm)
    assert plane.api.audit()["ok"]
    plane.api.unbind(["d"], "h2")
    assert gone(export)
    finish(plane, lun)
