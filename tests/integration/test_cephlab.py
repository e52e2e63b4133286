"""The private Ceph cluster (vvhost.cephlab) and the librados wrapper (vvhost.tools.ceph).

Against the real daemons: the cluster is healthy on private ports; an RBD
image in a RADOS namespace keeps a written pattern; a key limited to one
namespace reaches nothing else; removed or narrowed keys are refused;
fencing cuts a connected client off; stopping leaves no process behind.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import rados
import rbd

from tests.patterns import CHUNK, chunk_bytes
from vvhost import labpids
from vvhost.cephlab import CephLab, new_key
from vvhost.daemon import free_port
from vvhost.errors import CephDenied, CephError, CephUnreachable, NotFound
from vvhost.tools.ceph import Ceph, CephClient, keyring_text, rbd_caps

DEFAULT_MON_PORTS = {3300, 6789}


def test_cluster_is_healthy_on_private_ports(ceph_cluster: CephLab) -> None:
    with ceph_cluster.admin() as ceph:
        assert ceph.health() == "HEALTH_OK", ceph.health_checks()
        status = ceph.status()
        assert status["osdmap"]["num_up_osds"] == 1
        assert status["osdmap"]["num_in_osds"] == 1
        assert status["mgrmap"]["available"]
        (addrs,) = ceph.mon_addrs()
        ports = {int(part.rsplit(":", 1)[1].split("/")[0]) for part in addrs.strip("[]").split(",")}
        assert ports == set(ceph_cluster.mon_ports)
        assert not ports & DEFAULT_MON_PORTS
        assert "127.0.0.1" in addrs
        assert ceph.mon_endpoints() == [("127.0.0.1", ceph_cluster.mon_ports[1])]
        assert ceph.mon_endpoints("v2") == [("127.0.0.1", ceph_cluster.mon_ports[0])]
        assert ceph.command("osd dump")["require_min_compat_client"] == "mimic"
        minimal = ceph.minimal_conf()
        assert ceph.fsid() == ceph_cluster.fsid and ceph_cluster.fsid in minimal
    assert os.path.dirname(ceph_cluster.conf) == ceph_cluster.workdir
    assert ceph_cluster.startup_seconds > 0
    print(f"cluster ready in {ceph_cluster.startup_seconds:.1f}s")


def test_pools_are_made_for_rbd_and_removed(ceph_cluster: CephLab) -> None:
    name = f"t-{uuid.uuid4().hex[:10]}"
    ceph_cluster.create_pool(name)
    ceph_cluster.create_pool(name)  # again: nothing changes
    with ceph_cluster.admin() as ceph:
        assert ceph.pool_exists(name)
        pools = {p["pool_name"]: p for p in ceph.command("osd pool ls", detail="detail")}
        assert pools[name]["size"] == 1 and pools[name]["pg_num"] == 8
        assert set(pools[name]["application_metadata"]) == {"rbd"}
        with ceph.ioctx(name) as ioctx:  # rbd pool init ran
            assert rbd.RBD().list(ioctx) == []
            assert "rbd_info" in {o.key for o in ioctx.list_objects()}
    ceph_cluster.delete_pool(name)
    ceph_cluster.delete_pool(name)  # a missing pool is fine
    with ceph_cluster.admin() as ceph:
        assert not ceph.pool_exists(name)
        with pytest.raises(NotFound):
            with ceph.ioctx(name):
                pass
        assert ceph.health() == "HEALTH_OK"


# -- RBD data in a namespace ---------------------------------------------------------------

MiB = 1 << 20
IMAGE_SIZE = 64 * MiB
OFFSETS = [0, 5 * MiB + 4096, 33 * MiB, IMAGE_SIZE - CHUNK]


def _features() -> int:
    return int(
        rbd.RBD_FEATURE_LAYERING
        | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
        | rbd.RBD_FEATURE_OBJECT_MAP
        | rbd.RBD_FEATURE_FAST_DIFF
        | rbd.RBD_FEATURE_DEEP_FLATTEN
    )


def _write(image: Any, label: str) -> None:
    for off in OFFSETS:
        assert image.write(chunk_bytes(label, off), off) == CHUNK


def _check(image: Any, label: str) -> None:
    for off in OFFSETS:
        assert image.read(off, CHUNK) == chunk_bytes(label, off), f"chunk at {off} is not {label}"


def _make_image(ceph: Ceph, pool: str, namespace: str, name: str, label: str) -> None:
    with ceph.ioctx(pool) as ioctx:
        if namespace and not rbd.RBD().namespace_exists(ioctx, namespace):
            rbd.RBD().namespace_create(ioctx, namespace)
    with ceph.ioctx(pool, namespace) as ioctx:
        rbd.RBD().create(ioctx, name, IMAGE_SIZE, old_format=False, features=_features())
        with rbd.Image(ioctx, name) as image:
            _write(image, label)


def test_rbd_image_in_a_namespace_keeps_its_pattern(ceph_cluster: CephLab, ceph_pool: str) -> None:
    with ceph_cluster.admin() as ceph:
        _make_image(ceph, ceph_pool, "tenant-a", "disk0", "first")
        with ceph.ioctx(ceph_pool, "tenant-a") as ioctx:
            assert rbd.RBD().list(ioctx) == ["disk0"]
            with rbd.Image(ioctx, "disk0") as image:
                _check(image, "first")
                assert image.features() & _features() == _features()
                image.create_snap("s1")
                _write(image, "second")
            # clone format 2: a clone of an unprotected snapshot
            rbd.RBD().clone(ioctx, "disk0", "s1", ioctx, "clone0", features=_features())
            with rbd.Image(ioctx, "clone0") as clone:
                _check(clone, "first")
            with rbd.Image(ioctx, "disk0", snapshot="s1", read_only=True) as snap:
                _check(snap, "first")
            with rbd.Image(ioctx, "disk0", read_only=True) as image:
                _check(image, "second")
        with ceph.ioctx(ceph_pool) as ioctx:  # the default namespace does not see it
            assert rbd.RBD().list(ioctx) == []


# -- identities: one key per host, reaching only its namespaces ------------------------------


def _identity(ceph: Ceph, tmp_path: Path, pool: str, namespaces: list[str]) -> CephClient:
    """A new ``client.host-*`` limited to ``namespaces`` of ``pool``, as a host gets it:
    the monitors' minimal ceph.conf and a keyring with its one key (in tmp_path)."""
    user = f"host-{uuid.uuid4().hex[:8]}"
    key = ceph.auth_get_or_create(f"client.{user}", rbd_caps(pool, namespaces))
    keyring = tmp_path / f"{user}.keyring"
    keyring.write_text(keyring_text(f"client.{user}", key))
    conf = tmp_path / f"{user}.conf"
    conf.write_text(ceph.minimal_conf())
    return CephClient(conf=str(conf), user=user, keyring=str(keyring), timeout=5)


def _denied(call: Any) -> int:
    """Run ``call``; it must fail with a permission error. Returns the errno."""
    with pytest.raises((rbd.PermissionError, rados.PermissionError, CephDenied)) as info:
        call()
    code = getattr(info.value, "errno", None) or info.value.fields.get("errno")  # type: ignore[union-attr]
    assert abs(int(code)) in (errno.EPERM, errno.EACCES)
    return int(code)


def _open_and_check(client: Ceph, pool: str, namespace: str, name: str, label: str) -> None:
    with client.ioctx(pool, namespace) as ioctx, rbd.Image(ioctx, name) as image:
        _check(image, label)


def test_a_namespace_key_reaches_nothing_else(
    ceph_cluster: CephLab, ceph_pool: str, tmp_path: Path
) -> None:
    other_pool = f"{ceph_pool}-other"
    ceph_cluster.create_pool(other_pool)
    try:
        with ceph_cluster.admin() as ceph:
            _make_image(ceph, ceph_pool, "ns-a", "a0", "tenant-a")
            _make_image(ceph, ceph_pool, "ns-b", "b0", "tenant-b")
            _make_image(ceph, ceph_pool, "", "root0", "no-namespace")
            _make_image(ceph, other_pool, "ns-a", "x0", "other-pool")
            limited = _identity(ceph, tmp_path, ceph_pool, ["ns-a"])
        with Ceph(limited) as host:
            # its own namespace: list, open, read, write, create
            _open_and_check(host, ceph_pool, "ns-a", "a0", "tenant-a")
            with host.ioctx(ceph_pool, "ns-a") as ioctx:
                with rbd.Image(ioctx, "a0") as image:
                    _write(image, "rewritten")
                    _check(image, "rewritten")
                rbd.RBD().create(ioctx, "a1", MiB, old_format=False, features=_features())
                assert sorted(rbd.RBD().list(ioctx)) == ["a0", "a1"]
            # namespace B of the same pool: no listing, no opening, no raw objects
            with host.ioctx(ceph_pool, "ns-b") as ioctx:
                _denied(lambda: rbd.RBD().list(ioctx))
                _denied(lambda: rbd.Image(ioctx, "b0"))
                _denied(lambda: rbd.RBD().create(ioctx, "evil", MiB, old_format=False))
                _denied(lambda: ioctx.write_full("rbd_directory", b"x"))
            # the pool's default namespace and another pool: nothing either
            with host.ioctx(ceph_pool, "") as ioctx:
                _denied(lambda: rbd.RBD().list(ioctx))
                _denied(lambda: rbd.Image(ioctx, "root0"))
            with host.ioctx(other_pool, "ns-a") as ioctx:
                _denied(lambda: rbd.RBD().list(ioctx))
                _denied(lambda: rbd.Image(ioctx, "x0"))
                _denied(lambda: ioctx.write_full("planted", b"x"))
            # nor may it administer the cluster
            _denied(lambda: host.auth_ls())
            _denied(lambda: host.auth_get_or_create("client.evil", {"mon": "allow *"}))
        # what the others hold is untouched
        with ceph_cluster.admin() as ceph:
            _open_and_check(ceph, ceph_pool, "ns-b", "b0", "tenant-b")
            _open_and_check(ceph, ceph_pool, "", "root0", "no-namespace")
            _open_and_check(ceph, other_pool, "ns-a", "x0", "other-pool")
            assert "client.evil" not in ceph.auth_ls()
    finally:
        ceph_cluster.delete_pool(other_pool)


def test_narrowed_and_removed_keys_are_refused(
    ceph_cluster: CephLab, ceph_pool: str, tmp_path: Path
) -> None:
    with ceph_cluster.admin() as ceph:
        _make_image(ceph, ceph_pool, "ns-a", "a0", "tenant-a")
        _make_image(ceph, ceph_pool, "ns-b", "b0", "tenant-b")
        client = _identity(ceph, tmp_path, ceph_pool, ["ns-a", "ns-b"])
        entity = f"client.{client.user}"
        assert entity in ceph.auth_ls()
        key = ceph.auth_get_key(entity)
        assert key in (tmp_path / f"{client.user}.keyring").read_text()
        assert ceph.auth_caps_of(entity)["osd"] == rbd_caps(ceph_pool, ["ns-a", "ns-b"])["osd"]
        # get-or-create of an existing identity hands back the same key, if the caps agree
        assert ceph.auth_get_or_create(entity, rbd_caps(ceph_pool, ["ns-a", "ns-b"])) == key
        with pytest.raises(CephError):
            ceph.auth_get_or_create(entity, rbd_caps(ceph_pool, ["ns-a"]))

    with Ceph(client) as host:  # one cap string, two namespaces: both reachable
        _open_and_check(host, ceph_pool, "ns-a", "a0", "tenant-a")
        _open_and_check(host, ceph_pool, "ns-b", "b0", "tenant-b")

    with ceph_cluster.admin() as ceph:  # narrow it to ns-a
        ceph.auth_caps(entity, rbd_caps(ceph_pool, ["ns-a"]))
        assert ceph.auth_caps_of(entity)["osd"] == f"profile rbd pool={ceph_pool} namespace=ns-a"
    with Ceph(client) as host:
        _open_and_check(host, ceph_pool, "ns-a", "a0", "tenant-a")
        with host.ioctx(ceph_pool, "ns-b") as ioctx:
            _denied(lambda: rbd.Image(ioctx, "b0"))

    with ceph_cluster.admin() as ceph:  # remove it: the key no longer logs in
        ceph.auth_rm(entity)
        ceph.auth_rm(entity)  # removing twice is fine
        assert entity not in ceph.auth_ls()
        with pytest.raises(NotFound):
            ceph.auth_get_key(entity)
    started = time.monotonic()
    with pytest.raises(CephDenied) as info:
        Ceph(client).connect()
    assert time.monotonic() - started < client.timeout + 2
    assert entity in str(info.value) and "\n" not in str(info.value)


def test_a_fenced_client_is_cut_off(ceph_cluster: CephLab, ceph_pool: str, tmp_path: Path) -> None:
    with ceph_cluster.admin() as ceph:
        _make_image(ceph, ceph_pool, "ns-a", "a0", "tenant-a")
        client = _identity(ceph, tmp_path, ceph_pool, ["ns-a"])
    host = Ceph(client).connect()
    try:
        with host.ioctx(ceph_pool, "ns-a") as ioctx:
            ioctx.write_full("probe", b"before")
            addr = host.client_addrs()
            with ceph_cluster.admin() as ceph:
                ceph.blocklist_add(addr, expire=600)
                assert addr in ceph.blocklist_ls()
            # the OSD enforces the fence once it has the new OSD map: within seconds
            fenced_at = time.monotonic()
            refused, deadline = None, fenced_at + 15
            while refused is None and time.monotonic() < deadline:
                try:
                    ioctx.write_full("after", b"after")
                    time.sleep(0.2)
                except rados.Error as exc:
                    refused = exc
            assert refused is not None, "a fenced client could still write after 15 s"
            assert abs(refused.errno) in (errno.ESHUTDOWN, errno.ETIMEDOUT), refused
            print(f"fenced after {time.monotonic() - fenced_at:.1f}s: {refused}")
    finally:
        host.close()
    with ceph_cluster.admin() as ceph:
        with ceph.ioctx(ceph_pool, "ns-a") as ioctx:
            assert ioctx.read("probe") == b"before"
        ceph.blocklist_rm(addr)
        assert addr not in ceph.blocklist_ls()


# -- failures are quick and one line -----------------------------------------------------------


def test_an_unreachable_cluster_fails_in_seconds(ceph_cluster: CephLab, tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text(f"[global]\nfsid = {ceph_cluster.fsid}\nmon_host = 127.0.0.1:{free_port()}\n")
    client = CephClient(conf=str(conf), keyring=ceph_cluster.admin_keyring, timeout=3)
    started = time.monotonic()
    with pytest.raises(CephUnreachable) as info:
        Ceph(client).connect()
    assert time.monotonic() - started < 10
    assert str(conf) in str(info.value) and "\n" not in str(info.value)

    missing = CephClient(conf=str(tmp_path / "nope.conf"), timeout=3)
    with pytest.raises(CephError) as info2:
        Ceph(missing).connect()
    assert str(info2.value).endswith(f"no ceph.conf at {tmp_path / 'nope.conf'}")

    wrong = tmp_path / "wrong.keyring"
    wrong.write_text(f"[client.admin]\n\tkey = {new_key()}\n")
    bad_key = CephClient(conf=ceph_cluster.conf, keyring=str(wrong), timeout=3)
    with pytest.raises(CephDenied):
        Ceph(bad_key).connect()


# -- stopping: by PID, also after a partial start or a crashed run ----------------------------


def _processes_under(path: Path) -> dict[int, str]:
    """PID -> command line of every process whose command line names ``path``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = (Path("/proc") / entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmd:
            found[int(entry)] = cmd
    return found


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def _wait_gone(path: Path, timeout: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := _processes_under(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_stop_leaves_no_process_and_no_mount(tmp_path: Path) -> None:
    lab = CephLab(str(tmp_path / "lab"))
    with lab:
        pids = lab.pids()
        assert set(pids) == {"mon.a", "mgr.x", "osd.0"}
        assert set(_processes_under(tmp_path)) == set(pids.values())
        assert sorted(os.listdir(tmp_path / "lab" / "pids")) == sorted(f"{n}.pid" for n in pids)
        block = os.stat(tmp_path / "lab" / "osd" / "block.0")
        assert block.st_size == lab.osd_size and block.st_blocks * 512 < block.st_size // 4
        # a manager that dies is started again, and the cluster serves again
        assert lab.revive() == []
        os.kill(pids["mgr.x"], signal.SIGKILL)
        lab.procs["mgr.x"].wait(timeout=10)
        assert lab.revive() == ["mgr.x"]
        assert lab.pids()["mgr.x"] != pids["mgr.x"]
        with lab.admin() as ceph:
            assert ceph.status()["mgrmap"]["available"]
        pids = lab.pids()
    assert lab.pids() == {}
    assert _processes_under(tmp_path) == {}
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids.values())
    assert os.listdir(tmp_path / "lab" / "pids") == []
    assert _mounts_under(tmp_path) == []
    assert not os.path.exists("/etc/ceph/ceph.conf")


def test_a_failed_start_stops_what_it_started(tmp_path: Path) -> None:
    lab = CephLab(str(tmp_path / "lab"), osd_size=16 << 20)  # too small for BlueStore
    with pytest.raises(CephError) as info:
        lab.start()
    assert "ceph-osd" in str(info.value) and "\n" not in str(info.value)
    assert _processes_under(tmp_path) == {}
    assert lab.pids() == {}
    assert os.listdir(tmp_path / "lab" / "pids") == []


_CRASHING_RUN = """
import sys, time
from vvhost.cephlab import CephLab
lab = CephLab(sys.argv[1], die_with_parent=sys.argv[2] == "yes").start()
print("ready", flush=True)
time.sleep(600)
"""


def _crashed_run(workdir: Path, die_with_parent: bool) -> dict[int, str]:
    """Start a lab in a child python, SIGKILL the child once ready; the daemons it leaves."""
    argv = [sys.executable, "-c", _CRASHING_RUN, str(workdir), "yes" if die_with_parent else "no"]
    errors = workdir.parent / "child.err"
    with open(errors, "w") as err:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", errors.read_text()[-2000:]
        daemons = {pid: cmd for pid, cmd in _processes_under(workdir).items() if pid != child.pid}
        assert len(daemons) == 3, daemons
    finally:
        child.kill()
        child.wait()
    return daemons


def test_a_crashed_run_is_cleaned_up_by_pid(tmp_path: Path) -> None:
    workdir = tmp_path / "lab"
    try:
        daemons = _crashed_run(workdir, die_with_parent=False)
        assert set(_processes_under(workdir)) == set(daemons)  # orphans, still running
        assert sorted(labpids.reap_orphans([str(workdir)])) == sorted(daemons)
        assert _wait_gone(workdir, 5) == {}
        assert os.listdir(workdir / "pids") == []
    finally:
        labpids.reap(str(workdir))


def test_daemons_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    workdir = tmp_path / "lab"
    _crashed_run(workdir, die_with_parent=True)
    try:
        assert _wait_gone(workdir, 30) == {}
    finally:
        labpids.reap(str(workdir))


def test_a_running_owner_keeps_its_lab(ceph_cluster: CephLab) -> None:
    assert labpids.reap_orphans([ceph_cluster.workdir]) == []
    assert set(ceph_cluster.pids()) == {"mon.a", "mgr.x", "osd.0"}
    with ceph_cluster.admin() as ceph:
        assert ceph.health() == "HEALTH_OK"


def _qemu_io(pool: str, namespace: str, image: str, conf: str, user: str, *cmds: str) -> Any:
    spec = json.dumps(
        {
            "driver": "raw",
            "file": {
                "driver": "rbd",
                "pool": pool,
                "namespace": namespace,
                "image": image,
                "conf": conf,
                "user": user,
            },
        }
    )
    argv = ["qemu-io"] + [arg for c in cmds for arg in ("-c", c)] + [f"json:{spec}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_qemu_opens_only_its_namespace_with_a_host_key(
    ceph_cluster: CephLab, ceph_pool: str
) -> None:
    """QEMU's own librbd driver, with the lab's ceph.conf and a keyring at keyring_path."""
    user = f"host-{uuid.uuid4().hex[:8]}"
    with ceph_cluster.admin() as ceph:
        _make_image(ceph, ceph_pool, "ns-a", "a0", "tenant-a")
        _make_image(ceph, ceph_pool, "ns-b", "b0", "tenant-b")
        key = ceph.auth_get_or_create(f"client.{user}", rbd_caps(ceph_pool, ["ns-a"]))
    Path(ceph_cluster.keyring_path(user)).write_text(keyring_text(f"client.{user}", key))
    try:
        off = OFFSETS[1]
        done = _qemu_io(
            ceph_pool,
            "ns-a",
            "a0",
            ceph_cluster.conf,
            user,
            f"write -P 0x5a {off} 64k",
            f"read -P 0x5a {off} 64k",
            f"read -P 0 {OFFSETS[2] + CHUNK} 64k",
        )
        assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done
        refused = _qemu_io(ceph_pool, "ns-b", "b0", ceph_cluster.conf, user, "read 0 64k")
        assert refused.returncode != 0 and "not permitted" in refused.stderr, refused
        with ceph_cluster.admin() as ceph, ceph.ioctx(ceph_pool, "ns-a") as ioctx:
            with rbd.Image(ioctx, "a0", read_only=True) as image:
                assert image.read(off, CHUNK) == b"\x5a" * CHUNK
                assert image.read(OFFSETS[0], CHUNK) == chunk_bytes("tenant-a", OFFSETS[0])
        with ceph_cluster.admin() as ceph, ceph.ioctx(ceph_pool, "ns-b") as ioctx:
            with rbd.Image(ioctx, "b0", read_only=True) as image:
                _check(image, "tenant-b")
    finally:
        os.unlink(ceph_cluster.keyring_path(user))
        with ceph_cluster.admin() as ceph:
            ceph.auth_rm(f"client.{user}")
