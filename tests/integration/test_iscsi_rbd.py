"""The ``iscsi`` endpoint serving vvols of an RBD array (each container a RADOS
namespace), against a real Ceph cluster, tgtd, qemu-storage-daemon (FUSE
exports) and QEMU's iSCSI initiator, all driven through a ``vvhost serve`` in a
private mount namespace.

- a vvol's LUN is read and written by an initiator; the pattern is checked
  through librbd both ways; another host's initiator is refused
- ``vvol extend`` shows the new size through the LUN; the tail is writable
- a snapshot is served read-only (writes fail, the data stays)
- a crash of the control plane (the daemons are adopted from a new mount
  namespace), then of the qemu-storage-daemon (the supervisor replaces it, the
  dead FUSE mount is swept, the LUN reopened): the data path comes back
- after the last unbind nothing is mounted and no mountpoint file is left;
  stopping the control plane stops both daemons
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.iscsiauth import authed, image_opts
from tests.patterns import CHUNK, Patterns, chunk_bytes
from tests.runner import run
from vvhost.daemon import ServerProcess, free_port
from vvhost.pe.fuseexport import fuse_mounts

if TYPE_CHECKING:
    from vvhost.cephlab import CephLab

MiB = 1 << 20
SIZE = 8 * MiB
OFFSETS = [0, 3 * MiB, SIZE - CHUNK]
HA_IQN = "iqn.2008-11.org.linux-kvm"  # QEMU's default initiator name
HB_IQN = "iqn.2026-11.test:hb"


@dataclass
class Plane:
    server: ServerProcess
    tmp: str
    patterns: Patterns

    def cli(self, *args: str, ok: bool = True) -> Any:
        return run(sys.executable, "-m", "vvhost", "--socket", self.server.socket, *args, ok=ok)

    def js(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    @property
    def rundir(self) -> str:
        return os.path.join(self.server.state_dir, "pe", "iscsi1")

    def pid(self, sub: str = "") -> int:
        with open(os.path.join(self.rundir, sub, "pid"), encoding="ascii") as fh:
            return int(fh.read())

    def mounts(self, sub: str = "") -> list[str]:
        """FUSE mounts of the endpoint, as tgtd's (or the QSD's) mount namespace has them."""
        return fuse_mounts(self.pid(sub), os.path.join(self.rundir, "fuse"))

    def direct_files(self) -> list[bool]:
        """For each FUSE file tgtd has open: whether it is open with O_DIRECT."""
        tgtd, out = self.pid(), []
        for fd in os.listdir(f"/proc/{tgtd}/fd"):
            try:
                if "/fuse/f" not in os.readlink(f"/proc/{tgtd}/fd/{fd}"):
                    continue
                with open(f"/proc/{tgtd}/fdinfo/{fd}", encoding="ascii") as fh:
                    flags = next(int(x.split()[1], 8) for x in fh if x.startswith("flags:"))
            except OSError:
                continue
            out.append(bool(flags & os.O_DIRECT))
        return out


@pytest.fixture
def plane(ceph_cluster: CephLab, ceph_pool: str, tmp_path: str) -> Iterator[Plane]:
    state = os.path.join(tmp_path, "state")
    server = ServerProcess(state, os.path.join(tmp_path, "s.sock"), private_tgtd=True).start()
    p = Plane(server, str(tmp_path), Patterns())
    p.patterns.ceph = (ceph_cluster.conf, ceph_cluster.admin_keyring)
    try:
        p.cli("array", "add", "ceph1", "--backend", "rbd", "--pool", ceph_pool,
              "--conf", ceph_cluster.conf, "--keyring", ceph_cluster.admin_keyring)  # fmt: skip
        p.cli("tenant", "create", "ta")
        p.cli("container", "create", "ca", "--capacity", "1G", "--array", "ceph1", "--tenant", "ta")
        p.cli("host", "add", "ha", "--iqn", HA_IQN, "--tenant", "ta")
        p.cli("host", "add", "hb", "--iqn", HB_IQN, "--tenant", "ta")
        p.cli(
            "pe", "create", "iscsi1", "--protocol", "iscsi", "--portal", f"127.0.0.1:{free_port()}"
        )
        p.cli("vvol", "create", "--container", "ca", "--size", "8M", "--name", "va")
        yield p
    finally:
        server.stop()


def bind(p: Plane, vvol: str, host: str = "ha") -> dict[str, Any]:
    p.cli("vvol", "bind", vvol, "--host", host, "--pe", "iscsi1")
    [handle] = [b for b in p.js("binding", "list", "--host", host) if b["vvol"] == vid(p, vvol)]
    assert handle["uri"].startswith("iscsi://")
    return dict(handle)


def vid(p: Plane, name: str) -> str:
    return str(p.js("vvol", "show", name)["id"])


def qemu_io(handle: dict[str, Any], command: str, ok: bool = True) -> Any:
    return run("qemu-io", "-f", "raw", "-c", command, authed(handle), ok=ok)


def read_over_iscsi(p: Plane, handle: dict[str, Any], name: str) -> str:
    out = os.path.join(p.tmp, f"{name}.raw")
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", authed(handle), out)
    return out


def lun_size(handle: dict[str, Any]) -> int:
    info = json.loads(run("qemu-img", "info", "--output=json", authed(handle)).stdout)
    return int(info["virtual-size"])


def test_iscsi_serves_an_rbd_vvol_in_a_namespace(plane: Plane) -> None:
    p = plane
    va = p.js("vvol", "show", "va")
    pool, ns, _image = va["where"].split("/")
    assert ns, "every container of an RBD array is a RADOS namespace"
    p.patterns.write(va, "a1", OFFSETS)
    handle = bind(p, "va")

    # read through the initiator, written through librbd; and the other way round
    p.patterns.check(read_over_iscsi(p, handle, "a1"), "a1", OFFSETS)
    qemu_io(handle, f"write -P 0x5a {MiB} {CHUNK}")
    assert p.patterns.read(va, MiB, CHUNK) == b"\x5a" * CHUNK
    p.patterns.write(va, "a2", [2 * MiB])  # no stale page in between (tgtd uses O_DIRECT)
    qemu_io(handle, f"read -P 0x5a {MiB} {CHUNK}")
    p.patterns.check(read_over_iscsi(p, handle, "a2"), "a2", [2 * MiB])
    [mount] = p.mounts()
    assert mount.startswith(os.path.join(p.rundir, "fuse") + "/")
    assert p.direct_files() == [True]

    # another host's initiator cannot reach the LUN; the bound host's can
    ok = run("qemu-img", "info", *image_opts(handle, HA_IQN))
    assert "8 MiB" in ok.stdout
    refused = run("qemu-img", "info", *image_opts(handle, HB_IQN), ok=False)
    assert refused.returncode != 0
    assert p.patterns.read(va, 0, CHUNK) == chunk_bytes("a1", 0)

    # extend: the LUN shows the new size, and its tail is written through to the image
    p.cli("vvol", "extend", "va", "--size", "16M")
    assert lun_size(handle) == 16 * MiB
    assert p.direct_files() == [True]  # reopened with O_DIRECT still
    qemu_io(handle, f"write -P 0x6b {16 * MiB - CHUNK} {CHUNK}")
    assert p.patterns.read(va, 16 * MiB - CHUNK, CHUNK) == b"\x6b" * CHUNK

    # a snapshot is served read-only: writes fail and its data stays
    snap = p.js("vvol", "snapshot", "va", "--name", "va@s1")
    shandle = bind(p, snap["id"])
    assert shandle["lun"] != handle["lun"]
    snap_where = p.js("vvol", "show", snap["id"])["where"]
    assert snap_where.startswith(f"{pool}/{ns}/") and "@" in snap_where
    p.patterns.check(read_over_iscsi(p, shandle, "s1"), "a1", OFFSETS[:2])
    denied = qemu_io(shandle, f"write -P 0x77 0 {CHUNK}", ok=False)
    assert denied.returncode != 0 or "error" in (denied.stdout + denied.stderr).lower()
    assert p.patterns.read(snap_where, 0, CHUNK) == chunk_bytes("a1", 0)
    assert len(p.mounts()) == 2

    # unbinding the snapshot drops its export only; the last unbind leaves nothing
    p.cli("vvol", "unbind", snap["id"], "--host", "ha")
    assert len(p.mounts()) == 1
    qemu_io(handle, f"read -P 0x5a {MiB} {CHUNK}")
    p.cli("vvol", "unbind", "va", "--host", "ha")
    assert p.mounts() == []
    assert os.listdir(os.path.join(p.rundir, "fuse")) == []
    assert qemu_io(handle, f"read 0 {CHUNK}", ok=False).returncode != 0


def test_crashes_of_the_control_plane_and_of_the_fuse_daemon(plane: Plane) -> None:
    p = plane
    va = p.js("vvol", "show", "va")
    p.patterns.write(va, "c1", OFFSETS)
    handle = bind(p, "va")
    p.patterns.check(read_over_iscsi(p, handle, "c1"), "c1", OFFSETS)
    tgtd, qsd = p.pid(), p.pid("qsd")

    # the control plane crashes; a new one (in a new mount namespace) adopts both daemons
    p.server.kill()
    p.server = ServerProcess(p.server.state_dir, p.server.socket, private_tgtd=True).start()
    assert (p.pid(), p.pid("qsd")) == (tgtd, qsd)
    assert p.js("pe", "show", "iscsi1")["alive"] is True
    p.patterns.check(read_over_iscsi(p, handle, "c1b"), "c1", OFFSETS)

    # the FUSE daemon dies: the supervisor starts another one, sweeps the dead
    # mount from tgtd's namespace and reopens the LUN over the new file
    os.kill(qsd, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = p.js("pe", "show", "iscsi1")
        if shown["alive"] and shown["restarts"] >= 1:
            break
        time.sleep(0.2)
    assert shown["alive"] and shown["restarts"] >= 1, shown
    assert p.pid("qsd") != qsd and p.pid() == tgtd
    p.patterns.check(read_over_iscsi(p, handle, "c1c"), "c1", OFFSETS)
    qemu_io(handle, f"write -P 0x4d {2 * MiB} {CHUNK}")
    assert p.patterns.read(va, 2 * MiB, CHUNK) == b"\x4d" * CHUNK
    assert p.direct_files() == [True]
    # the new daemon mounted in the new control plane's namespace; tgtd's (the
    # first one's) has no dead mount left
    assert os.readlink(f"/proc/{tgtd}/ns/mnt") != os.readlink(f"/proc/{p.pid('qsd')}/ns/mnt")
    assert len(p.mounts("qsd")) == 1 and p.mounts() == []

    p.cli("vvol", "unbind", "va", "--host", "ha")
    assert p.mounts("qsd") == p.mounts() == []
    qsd = p.pid("qsd")
    p.server.stop()
    assert gone(qsd) and gone(tgtd)


def gone(pid: int, timeout: float = 5.0) -> bool:
    """The process exited (a zombie whose orphan reaper is late counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                if fh.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False
