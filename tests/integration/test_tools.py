"""The tool wrappers against the real daemons: tgtd (tgtadm), qemu-storage-daemon (QMP).

tgtd's control socket is the fixed path /run/tgtd/socket.N: each tgtd here gets
an unused N in 900-999 and a free loopback portal; the socket files it leaves
are removed afterwards. Every process a test starts is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from vvhost.daemon import free_port
from vvhost.pe.proc import Daemon, stop_pidfile
from vvhost.tools import EndpointError, run
from vvhost.tools.qmp import Qmp
from vvhost.tools.qsd import StorageDaemonApi, node_name_for, qsd_argv
from vvhost.tools.tgtadm import Tgtadm, parse_show
from vvhost.tools.tgtd_ipc import MODE_TARGET, OP_SHOW, OP_UPDATE

MiB = 1 << 20
KVM_INITIATOR = "iqn.2008-11.org.linux-kvm"  # what qemu-io/qemu-img log in as
TGT_RUN = "/run/tgtd"


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True


def kill_if_running(pid: int | None, argv0: str) -> None:
    """Last-resort cleanup of a test's own process, by PID, if it still runs ``argv0``."""
    if pid is None or gone(pid):
        return
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if fh.read().split(b"\0")[0] == argv0.encode():
                os.kill(pid, signal.SIGKILL)


def sh(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def make_image(path: str, size: int = 16 * MiB) -> str:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def sha_of(path: str, offset: int, length: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return hashlib.sha256(fh.read(length)).hexdigest()


def sha_pattern(byte: int, length: int) -> str:
    return hashlib.sha256(bytes([byte]) * length).hexdigest()


# --- tgtd ---------------------------------------------------------------------


@dataclass
class Tgt:
    adm: Tgtadm
    port: int
    daemon: Daemon

    def url(self, iqn: str, lun: int | None = None) -> str:
        base = f"iscsi://127.0.0.1:{self.port}"
        return base if lun is None else f"{base}/{iqn}/{lun}"


@pytest.fixture
def tgt(tmp_path: str) -> Iterator[Tgt]:
    made_dir = not os.path.isdir(TGT_RUN)
    os.makedirs(TGT_RUN, exist_ok=True)
    control = next(
        n
        for n in random.sample(range(900, 1000), 100)
        if not any(os.path.exists(f"{TGT_RUN}/socket.{n}{s}") for s in ("", ".lock"))
    )
    adm = Tgtadm(control)
    assert not adm.ping()
    port = free_port()
    argv = ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal=127.0.0.1:{port}"]
    daemon = Daemon("tgtd", argv, os.path.join(tmp_path, "tgtd"), adm.ping)
    try:
        daemon.start()
        yield Tgt(adm, port, daemon)
    finally:
        pid = daemon.pid
        daemon.stop(timeout=0)  # tgtd ignores SIGTERM
        assert pid is not None and gone(pid)
        for suffix in ("", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{TGT_RUN}/socket.{control}{suffix}")
        if made_dir:
            os.rmdir(TGT_RUN)


def iscsi_ls(initiator: str, url: str) -> str:
    return run("iscsi-ls", ["iscsi-ls", "-i", initiator, "-s", url], 30.0)


def test_lun_serial_and_scsi_id_in_inquiry(tgt: Tgt, tmp_path: str) -> None:
    iqn = "iqn.2024-01.test.vvhost:vm1"
    serial = hashlib.md5(b"vvol-1").hexdigest()  # 32 hex
    tgt.adm.target_new(1, iqn)
    tgt.adm.bind_name(1, KVM_INITIATOR)
    tgt.adm.lun_new(1, 1, make_image(f"{tmp_path}/a.img"), serial=serial, scsi_id="vvol-1")

    out = sh("iscsi-inq", "-i", KVM_INITIATOR, "-e", "1", "-c", "128", tgt.url(iqn, 1))
    assert out.returncode == 0, out.stderr
    assert "Unit Serial Number" in out.stdout and serial in out.stdout
    out = sh("iscsi-inq", "-i", KVM_INITIATOR, "-e", "1", "-c", "131", tgt.url(iqn, 1))
    assert out.returncode == 0, out.stderr
    assert "T10_VENDORT_ID" in out.stdout and "Designator:[vvol-1]" in out.stdout
    out = sh("iscsi-inq", "-i", KVM_INITIATOR, tgt.url(iqn, 1))
    assert "VVHOST" in out.stdout and "vvol" in out.stdout


def test_acl_by_initiator_name(tgt: Tgt, tmp_path: str) -> None:
    iqn = "iqn.2024-01.test.vvhost:acl"
    allowed, other = "iqn.2024-01.test.host:allowed", "iqn.2024-01.test.host:other"
    tgt.adm.target_new(1, iqn)
    tgt.adm.lun_new(1, 1, make_image(f"{tmp_path}/a.img"))
    assert iqn not in iscsi_ls(allowed, tgt.url(iqn))  # no ACL at all: nobody

    tgt.adm.bind_name(1, allowed)
    seen = iscsi_ls(allowed, tgt.url(iqn))
    assert iqn in seen and "Lun:1" in seen
    assert iqn not in iscsi_ls(other, tgt.url(iqn))
    refused = sh("iscsi-inq", "-i", other, tgt.url(iqn, 1))
    assert refused.returncode != 0

    [target] = tgt.adm.show()
    assert target.initiator_names == [allowed] and target.initiator_addresses == []

    # An address ACL is OR-ed with the name ACLs: "ALL" opens the target to anyone.
    tgt.adm.bind_address(1, "ALL")
    assert iqn in iscsi_ls(other, tgt.url(iqn))
    [target] = tgt.adm.show()
    assert target.initiator_names == [allowed] and target.initiator_addresses == ["ALL"]

    tgt.adm.unbind_name(1, allowed)
    [target] = tgt.adm.show()
    assert target.initiator_names == []


def test_qemu_io_write_reaches_backing_file(tgt: Tgt, tmp_path: str) -> None:
    iqn = "iqn.2024-01.test.vvhost:io"
    image = make_image(f"{tmp_path}/a.img")
    tgt.adm.target_new(1, iqn)
    tgt.adm.bind_name(1, KVM_INITIATOR)
    tgt.adm.lun_new(1, 1, image, serial="0" * 32)

    wrote = sh("qemu-io", "-f", "raw", "-c", f"write -P 0x5a {4 * MiB} {MiB}", tgt.url(iqn, 1))
    assert wrote.returncode == 0, wrote.stderr + wrote.stdout
    assert sha_of(image, 4 * MiB, MiB) == sha_pattern(0x5A, MiB)
    assert sha_of(image, 0, 4 * MiB) == sha_pattern(0, 4 * MiB)
    read = sh("qemu-io", "-f", "raw", "-r", "-c", f"read -P 0x5a {4 * MiB} {MiB}", tgt.url(iqn, 1))
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout


def test_readonly_lun_refuses_write(tgt: Tgt, tmp_path: str) -> None:
    iqn = "iqn.2024-01.test.vvhost:ro"
    image = make_image(f"{tmp_path}/a.img")
    tgt.adm.target_new(1, iqn)
    tgt.adm.bind_name(1, KVM_INITIATOR)
    tgt.adm.lun_new(1, 1, image, readonly=True, serial="1" * 32)

    wrote = sh("qemu-io", "-f", "raw", "-c", f"write -P 0x77 0 {MiB}", tgt.url(iqn, 1))
    assert wrote.returncode != 0
    assert "write protected" in wrote.stderr + wrote.stdout
    assert sha_of(image, 0, MiB) == sha_pattern(0, MiB)
    read = sh("qemu-io", "-f", "raw", "-r", "-c", f"read -P 0 0 {MiB}", tgt.url(iqn, 1))
    assert read.returncode == 0, read.stderr
    [target] = tgt.adm.show()
    assert target.luns[0].readonly is True


def test_show_parses_and_deletes(tgt: Tgt, tmp_path: str) -> None:
    a, b = make_image(f"{tmp_path}/a.img"), make_image(f"{tmp_path}/b b.img")
    one_iqn = "iqn.2024-01.test.vvhost:one"
    tgt.adm.target_new(1, one_iqn)
    tgt.adm.target_new(2, "iqn.2024-01.test.vvhost:two")
    tgt.adm.lun_new(1, 1, a, serial="a" * 32, scsi_id="vvol-a")
    tgt.adm.lun_new(1, 2, b, readonly=True, serial="b" * 32, scsi_id="vvol-b")
    tgt.adm.lun_new(2, 5, a)
    tgt.adm.bind_name(1, KVM_INITIATOR)
    tgt.adm.bind_address(2, "127.0.0.1")
    tgt.adm.bind_address(2, "10.1.0.0/16")

    # A logged-in session adds an I_T nexus block, which the parser skips.
    holder = subprocess.Popen(
        [
            "qemu-io",
            "-f",
            "raw",
            "-r",
            "-c",
            "sleep 20000",
            tgt.url("iqn.2024-01.test.vvhost:one", 1),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while "I_T nexus: " not in tgt.adm.ipc.request(MODE_TARGET, OP_SHOW):
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        one, two = tgt.adm.show()
        assert (one.tid, one.iqn) == (1, "iqn.2024-01.test.vvhost:one")
        assert [(x.lun, x.path, x.readonly, x.serial, x.scsi_id) for x in one.luns] == [
            (1, a, False, "a" * 32, "vvol-a"),
            (2, b, True, "b" * 32, "vvol-b"),
        ]
        assert one.initiator_names == [KVM_INITIATOR] and one.initiator_addresses == []
        assert (two.tid, [x.lun for x in two.luns]) == (2, [5])
        assert two.luns[0].serial and two.luns[0].scsi_id  # tgt's defaults
        assert two.initiator_addresses == ["127.0.0.1", "10.1.0.0/16"]
        assert two.initiator_names == []

        tgt.adm.lun_delete(1, 2)
        assert [x.lun for x in tgt.adm.show()[0].luns] == [1]
        tgt.adm.target_delete(1)  # forced: the session is still logged in
        assert [t.tid for t in tgt.adm.show()] == [2]
    finally:
        holder.kill()
        holder.wait()


def test_lun_new_removes_half_made_lun(
    tgt: Tgt, tmp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = Tgtadm(tgt.adm.control_port)
    real = broken.ipc.request

    def failing_update(mode: int, op: int, **kw: Any) -> str:  # tgtd refusing the update
        if op == OP_UPDATE:
            raise EndpointError(tool="tgtd", detail="boom")
        return real(mode, op, **kw)

    monkeypatch.setattr(broken.ipc, "request", failing_update)
    broken.target_new(1, "iqn.2024-01.test.vvhost:half")
    with pytest.raises(EndpointError) as err:
        broken.lun_new(1, 1, make_image(f"{tmp_path}/a.img"), serial="c" * 32)
    assert str(err.value) == "tgtd: boom"
    assert tgt.adm.show()[0].luns == []


def test_tgtadm_errors(tgt: Tgt, tmp_path: str) -> None:
    with pytest.raises(EndpointError) as err:
        tgt.adm.target_delete(7)
    assert err.value.code == "endpoint-error" and err.value.exit_code == 6
    assert err.value.fields["tool"] == "tgtd"
    assert str(err.value) == "tgtd: can't find the target"
    with pytest.raises(ValueError):
        tgt.adm.lun_new(1, 1, f"{tmp_path}/x", serial="has,comma")
    nobody = next(n for n in range(1000, 1100) if not os.path.exists(f"{TGT_RUN}/socket.{n}"))
    assert Tgtadm(nobody, timeout=2).ping() is False


def test_parse_show_without_targets() -> None:
    assert parse_show("") == []


# --- qemu-storage-daemon --------------------------------------------------------


@dataclass
class Qsd:
    daemon: Daemon
    qmp: Qmp
    api: StorageDaemonApi
    nbd: str

    def uri(self, name: str = "") -> str:
        return f"nbd+unix:///{name}?socket={self.nbd}"


@contextlib.contextmanager
def qsd_running(rundir: str, tcp_port: int | None = None) -> Iterator[Qsd]:
    qmp_sock, nbd_sock = f"{rundir}/qmp.sock", f"{rundir}/nbd.sock"
    daemon = Daemon("qsd", qsd_argv(qmp_sock), rundir, lambda: os.path.exists(qmp_sock))
    qmp: Qmp | None = None
    try:
        daemon.start()
        qmp = Qmp(qmp_sock)
        qmp.connect()
        api = StorageDaemonApi(qmp)
        if tcp_port is None:
            api.start_nbd_server_unix(nbd_sock)
        else:
            api.start_nbd_server_tcp("127.0.0.1", tcp_port)
        yield Qsd(daemon, qmp, api, nbd_sock)
    finally:
        if qmp is not None:
            qmp.close()
        pid = daemon.pid
        daemon.stop()
        assert pid is None or gone(pid)


@pytest.fixture
def qsd(tmp_path: str) -> Iterator[Qsd]:
    with qsd_running(f"{tmp_path}/qsd") as q:
        yield q


def nbd_exports(q: Qsd) -> list[str]:
    out = run("nbdinfo", ["nbdinfo", "--list", "--json", q.uri()], 30.0)
    return [e["export-name"] for e in json.loads(out)["exports"]]


def test_export_lists_and_writes(qsd: Qsd, tmp_path: str) -> None:
    image = make_image(f"{tmp_path}/v.img")
    node = node_name_for("vvol-1")
    qsd.api.add_file_node(node, image, readonly=False)
    qsd.api.add_export("e-vvol-1", node, "vvol-1", writable=True)
    assert nbd_exports(qsd) == ["vvol-1"]
    assert qsd.api.exports() == [
        {"type": "nbd", "id": "e-vvol-1", "node-name": node, "shutting-down": False}
    ]
    assert qsd.api.nodes() == [node]

    wrote = sh("qemu-io", "-f", "raw", "-c", f"write -P 0xc3 {3 * MiB} {MiB}", qsd.uri("vvol-1"))
    assert wrote.returncode == 0, wrote.stderr + wrote.stdout
    assert sha_of(image, 3 * MiB, MiB) == sha_pattern(0xC3, MiB)


def test_readonly_export_refuses_write(qsd: Qsd, tmp_path: str) -> None:
    image = make_image(f"{tmp_path}/v.img")
    node = node_name_for("vvol-ro")
    qsd.api.add_file_node(node, image, readonly=True)
    with pytest.raises(EndpointError) as err:
        qsd.api.add_export("e-rw", node, "rw", writable=True)
    assert err.value.fields["tool"] == "qmp" and "block-export-add" in str(err.value)
    qsd.api.add_export("e-ro", node, "ro", writable=False)

    wrote = sh("qemu-io", "-f", "raw", "-c", f"write -P 0x11 0 {MiB}", qsd.uri("ro"))
    assert wrote.returncode != 0 or "failed" in wrote.stdout + wrote.stderr
    assert sha_of(image, 0, MiB) == sha_pattern(0, MiB)
    read = sh("qemu-io", "-f", "raw", "-r", "-c", f"read -P 0 0 {MiB}", qsd.uri("ro"))
    assert read.returncode == 0, read.stderr


def test_del_export_and_node(qsd: Qsd, tmp_path: str) -> None:
    baseline = len(qsd.qmp.cmd("query-named-block-nodes", flat=True))
    node = node_name_for("vvol-del")
    qsd.api.add_file_node(node, make_image(f"{tmp_path}/v.img"), readonly=False)
    qsd.api.add_export("e-del", node, "del", writable=True)
    assert nbd_exports(qsd) == ["del"]

    qsd.api.del_export("e-del")
    qsd.api.del_node(node)
    assert nbd_exports(qsd) == []
    assert qsd.api.exports() == []
    names = [n["node-name"] for n in qsd.qmp.cmd("query-named-block-nodes", flat=True)]
    assert node not in names and len(names) == baseline  # the file child went too

    # the same names can be used again
    qsd.api.add_file_node(node, make_image(f"{tmp_path}/w.img"), readonly=False)
    qsd.api.add_export("e-del", node, "del", writable=True)
    qsd.api.del_export("e-del")
    qsd.api.del_node(node)


def test_del_export_with_client_connected(qsd: Qsd, tmp_path: str) -> None:
    node = node_name_for("vvol-busy")
    qsd.api.add_file_node(node, make_image(f"{tmp_path}/v.img"), readonly=False)
    qsd.api.add_export("e-busy", node, "busy", writable=True)
    holder = subprocess.Popen(
        ["qemu-io", "-f", "raw", "-c", "sleep 20000", qsd.uri("busy")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        assert holder.poll() is None
        with pytest.raises(EndpointError, match="still in use"):
            qsd.api.del_export("e-busy", force=False)
        qsd.api.del_export("e-busy")  # hard: the client is dropped
        qsd.api.del_node(node)
        assert qsd.api.nodes() == []
    finally:
        holder.kill()
        holder.wait()


def test_two_daemons_share_one_file(tmp_path: str) -> None:
    image = make_image(f"{tmp_path}/shared.img")
    with qsd_running(f"{tmp_path}/q1") as q1, qsd_running(f"{tmp_path}/q2") as q2:
        node = node_name_for("shared")
        for i, q in enumerate((q1, q2)):
            q.api.add_file_node(node, image, readonly=False)
            q.api.add_export(f"e{i}", node, "shared", writable=True)
        w1 = sh("qemu-io", "-f", "raw", "-c", f"write -P 0x01 0 {MiB}", q1.uri("shared"))
        w2 = sh("qemu-io", "-f", "raw", "-c", f"write -P 0x02 {MiB} {MiB}", q2.uri("shared"))
        assert w1.returncode == 0 and w2.returncode == 0, w1.stderr + w2.stderr
        r = sh("qemu-io", "-f", "raw", "-r", "-c", f"read -P 0x02 {MiB} {MiB}", q1.uri("shared"))
        assert r.returncode == 0 and "verification failed" not in r.stdout
        r = sh("qemu-io", "-f", "raw", "-r", "-c", f"read -P 0x01 0 {MiB}", q2.uri("shared"))
        assert r.returncode == 0 and "verification failed" not in r.stdout
        for i, q in enumerate((q1, q2)):
            q.api.del_export(f"e{i}")
            q.api.del_node(node)
    assert sha_of(image, 0, MiB) == sha_pattern(1, MiB)
    assert sha_of(image, MiB, MiB) == sha_pattern(2, MiB)


def test_nbd_server_on_tcp(tmp_path: str) -> None:
    port = free_port()
    with qsd_running(f"{tmp_path}/q", tcp_port=port) as q:
        node = node_name_for("tcp")
        q.api.add_file_node(node, make_image(f"{tmp_path}/v.img"), readonly=False)
        q.api.add_export("e-tcp", node, "tcp", writable=False)
        out = run("nbdinfo", ["nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{port}"], 30.0)
        assert [e["export-name"] for e in json.loads(out)["exports"]] == ["tcp"]


def test_resize_grows_file(qsd: Qsd, tmp_path: str) -> None:
    image = make_image(f"{tmp_path}/v.img", 8 * MiB)
    node = node_name_for("vvol-grow")
    qsd.api.add_file_node(node, image, readonly=False)
    qsd.api.resize(node, 24 * MiB)
    assert os.path.getsize(image) == 24 * MiB
    qsd.api.del_node(node)


def test_qmp_errors_and_events(qsd: Qsd, tmp_path: str) -> None:
    with pytest.raises(EndpointError) as err:
        qsd.qmp.cmd("no-such-command")
    assert str(err.value).startswith("qmp: no-such-command: CommandNotFound: ")
    with pytest.raises(EndpointError, match="no BLOCK_EXPORT_DELETED event"):
        qsd.qmp.wait_event("BLOCK_EXPORT_DELETED", {"id": "x"}, timeout=0.2)
    with pytest.raises(EndpointError, match="connect"):
        Qmp(f"{tmp_path}/missing.sock").connect(retry_for=0.2)
    # a second client on the same monitor gets no greeting while the first is connected
    second = Qmp(qsd.qmp.socket_path, timeout=0.5)
    try:
        with pytest.raises(EndpointError, match="no greeting"):
            second.connect(retry_for=0)
    finally:
        second.close()
    assert qsd.qmp.cmd("query-block-exports") == []


def test_node_name_for() -> None:
    names = {node_name_for(f"vvol-{i}") for i in range(1000)}
    assert len(names) == 1000
    for name in names:
        assert len(name) == 31 and name[0].isalpha() and name.isalnum()
    assert node_name_for("x" * 500) == node_name_for("x" * 500)


def test_qsd_argv_never_daemonizes() -> None:
    argv = qsd_argv("/run/a,b/qmp.sock")
    assert "--daemonize" not in argv
    assert "path=/run/a,,b/qmp.sock" in argv[2]


# --- Daemon ---------------------------------------------------------------------

SLEEPER = ["sleep", "3000"]


def test_daemon_adopts_after_object_is_dropped(tmp_path: str) -> None:
    rundir = f"{tmp_path}/d"
    first = Daemon("sleeper", SLEEPER, rundir, lambda: True).start()
    pid = first.pid
    assert pid is not None and first.adopted is False
    try:
        del first
        second = Daemon("sleeper", SLEEPER, rundir, lambda: True).start()
        assert second.adopted is True and second.pid == pid and second.alive()
        second.stop(timeout=5)
        assert gone(pid) and not second.alive()
        assert not os.path.exists(f"{rundir}/pid")
        third = Daemon("sleeper", SLEEPER, rundir, lambda: True).start()
        assert third.adopted is False and third.pid != pid
        pid = third.pid
        assert pid is not None
        Daemon("sleeper", SLEEPER, rundir, lambda: True).stop()  # never started: uses pidfile
        assert gone(pid)
    finally:
        kill_if_running(pid, "sleep")


def test_stop_pidfile_after_supervisor_crash(tmp_path: str) -> None:
    rundir = f"{tmp_path}/d"
    crashed = (
        "import os, sys; from vvhost.pe.proc import Daemon; "
        f"Daemon('sleeper', {SLEEPER!r}, sys.argv[1], lambda: True).start(); os._exit(0)"
    )
    out = sh(sys.executable, "-c", crashed, rundir)
    assert out.returncode == 0, out.stderr
    with open(f"{rundir}/pid") as fh:
        pid = int(fh.read())
    try:
        assert not gone(pid)
        assert stop_pidfile(rundir, timeout=5) is True
        assert gone(pid) and not os.path.exists(f"{rundir}/pid")
        assert stop_pidfile(rundir) is False
    finally:
        kill_if_running(pid, "sleep")


def test_pid_reuse_is_never_signalled(tmp_path: str) -> None:
    rundir = f"{tmp_path}/d"
    stranger = subprocess.Popen(["sleep", "3001"])
    try:
        os.makedirs(rundir)
        with open(f"{rundir}/pid", "w") as fh:
            fh.write(f"{stranger.pid}\n")
        with open(f"{rundir}/cmdline", "wb") as fh:
            fh.write(b"sleep\x003000\x00")
        assert stop_pidfile(rundir, timeout=0.1) is False
        assert stranger.poll() is None
        with open(f"{rundir}/pid", "w") as fh:
            fh.write(f"{stranger.pid}\n")
        d = Daemon("sleeper", SLEEPER, rundir, lambda: True).start()
        try:
            assert d.adopted is False and d.pid != stranger.pid
        finally:
            d.stop()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_daemon_that_exits_at_once(tmp_path: str) -> None:
    rundir = f"{tmp_path}/d"
    argv = ["sh", "-c", "echo starting; echo 'fatal: no such portal' >&2; exit 3"]
    with pytest.raises(EndpointError) as err:
        Daemon("broken", argv, rundir, lambda: False).start(timeout=5)
    assert str(err.value) == "broken: exited with status 3: fatal: no such portal"
    assert not os.path.exists(f"{rundir}/pid")
    with pytest.raises(EndpointError, match=r"status 0: \(no output\)"):
        Daemon("quiet", ["true"], rundir, lambda: False).start(timeout=5)


def test_daemon_not_ready_is_killed(tmp_path: str) -> None:
    pids: list[int | None] = []

    def never() -> bool:
        pids.append(d.pid)
        return False

    d = Daemon("slow", SLEEPER, f"{tmp_path}/d", never)
    try:
        with pytest.raises(EndpointError, match="not ready after 0.3s"):
            d.start(timeout=0.3)
        assert pids and pids[0] is not None and gone(pids[0])
        assert d.pid is None and not os.path.exists(f"{tmp_path}/d/pid")
    finally:
        kill_if_running(pids[0] if pids else None, "sleep")


@pytest.mark.parametrize("adopt", [False, True])
def test_stop_kills_a_daemon_that_ignores_sigterm(tmp_path: str, adopt: bool) -> None:
    rundir, mark = f"{tmp_path}/d", f"{tmp_path}/ignoring"
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'w').close(); time.sleep(3000)"
    )
    argv = [sys.executable, "-c", code, mark]
    d = Daemon("stubborn", argv, rundir, lambda: os.path.exists(mark)).start()
    pid = d.pid
    assert pid is not None
    try:
        if adopt:
            d = Daemon("stubborn", argv, rundir, lambda: True).start()
            assert d.adopted
        started = time.monotonic()
        d.stop(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        assert gone(pid)
    finally:
        kill_if_running(pid, sys.executable)


def test_tgtd_daemon_adopted_by_second_supervisor(tgt: Tgt) -> None:
    again = Daemon("tgtd", tgt.daemon.argv, tgt.daemon.rundir, tgt.adm.ping).start()
    assert again.adopted and again.pid == tgt.daemon.pid
    tgt.adm.target_new(3, "iqn.2024-01.test.vvhost:adopted")
    assert [t.tid for t in tgt.adm.show()] == [3]
