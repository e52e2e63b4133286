"""A private single-node Ceph cluster under one directory, for tests and the tour.

One monitor, one manager and one OSD (BlueStore on a sparse file), all on
127.0.0.1 with free ports (never the default 3300/6789), all files under
``workdir``; /etc/ceph and /var/lib/ceph are never read or written::

    workdir/
      ceph.conf                    fsid, mon_host, size-1 pools, small memory, paths below
      ceph.client.admin.keyring    the admin key ([client] keyring = ceph.client.$id.keyring,
                                   so a keyring put at keyring_path(user) is found too)
      bootstrap/                   mon. + client.admin + mgr.x keys, monmap (mkfs input)
      mon/a/                       monitor store (mon --mkfs)
      mgr/x/keyring
      osd/0/                       osd --mkfs: keyring, fsid, block -> ../block.0
      osd/block.0                  the BlueStore device: a sparse file
      run/                         admin sockets
      log/                         each daemon's log and its stdout+stderr (NAME.out)
      pids/mon.a.pid ...           written as each daemon starts (PID, then its command line)

Start, step by step (``start``)::

    ports, conf, keys  ->  monmaptool --create  ->  ceph-mon --mkfs  ->  ceph-mon -f
      ->  ceph-mgr -f  ->  osd new UUID (cephx key in)  ->  ceph-osd --mkfs  ->  ceph-osd -f
      ->  osd set-require-min-compat-client mimic (RBD clone format 2)
      ->  wait: HEALTH_OK, 1 OSD up+in, mgr available, every PG active+clean

Daemons run in the foreground (``-f``) as children in their own session, so
``stop`` sends SIGTERM to each PID it started (OSD, manager, monitor), waits,
then SIGKILLs what is left, also after a partial start. Each is recorded in
``pids/`` (see :mod:`vvhost.labpids`): ``labpids.reap(workdir)`` cleans up after
a run that crashed, by PID.
"""

from __future__ import annotations

import base64
import os
import random
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType

from . import labpids
from .errors import CephError, InternalError
from .tools.ceph import Ceph, CephClient

MON_ID = "a"
MGR_ID = "x"
OSD_ID = 0
GiB = 1 << 30


def new_key() -> str:
    """A fresh cephx secret, as ``ceph-authtool --gen-print-key`` makes one.

    Layout (little endian), base64-encoded: u16 type (1 = AES), u32 seconds,
    u32 nanoseconds (creation time), u16 length (16), 16 random bytes.
    """
    now = time.time()
    head = struct.pack("<HIIH", 1, int(now), int((now % 1) * 1e9), 16)
    return base64.b64encode(head + os.urandom(16)).decode()


def _keyring(entity: str, key: str, caps: dict[str, str]) -> str:
    lines = [f"[{entity}]", f"\tkey = {key}"]
    lines += [f'\tcaps {svc} = "{cap}"' for svc, cap in caps.items()]
    return "\n".join(lines) + "\n"


# Manager modules never loaded: none a lab needs and none Ceph keeps always on
# (disabling one of those is a MGR_MODULE_ERROR); they cost memory and CPU.
_MGR_DISABLED = " ".join(
    ["alerts", "diskprediction_local", "influx", "insights", "localpool", "mirroring", "nfs"]
    + ["osd_perf_query", "osd_support", "prometheus", "restful", "selftest", "snap_schedule"]
    + ["stats", "telegraf", "test_orchestrator", "zabbix"]
)

_ALL = {"mon": "allow *", "osd": "allow *", "mgr": "allow *", "mds": "allow *"}


@dataclass
class CephLab:
    """A private cluster under ``workdir``; ``with CephLab(d) as lab:`` starts and stops it."""

    workdir: str
    osd_size: int = 10 * GiB  # the sparse BlueStore file (a size, not disk used)
    osd_memory: int = 896 << 20  # osd_memory_target (Ceph's minimum)
    ready_timeout: float = 180.0
    mon_ports: tuple[int, int] = (0, 0)  # (msgr2, msgr1), chosen at start
    fsid: str = ""
    startup_seconds: float = 0.0  # how long start() took, HEALTH_OK included
    # SIGTERM the daemons when the thread that started them dies (PR_SET_PDEATHSIG):
    # start the lab from a thread that outlives it (the main thread) or set False.
    die_with_parent: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    argvs: dict[str, list[str]] = field(default_factory=dict)  # how each daemon was started

    # -- paths ----------------------------------------------------------------

    @property
    def conf(self) -> str:
        return os.path.join(self.workdir, "ceph.conf")

    @property
    def admin_keyring(self) -> str:
        return os.path.join(self.workdir, "ceph.client.admin.keyring")

    @property
    def mon_host(self) -> str:
        v2, v1 = self.mon_ports
        return f"[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]"

    def keyring_path(self, user: str) -> str:
        """Where a client's keyring goes so that the lab's ceph.conf finds it for ``user``."""
        return os.path.join(self.workdir, f"ceph.client.{user}.keyring")

    def _path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def admin(self, timeout: float = 10.0) -> Ceph:
        """An admin connection (connect it, or use it as a context manager)."""
        return Ceph(
            CephClient(conf=self.conf, user="admin", keyring=self.admin_keyring, timeout=timeout)
        )

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> CephLab:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> CephLab:
        began = time.monotonic()
        try:
            self._prepare()
            self._spawn(f"mon.{MON_ID}", ["ceph-mon", "-f", "-i", MON_ID, "-c", self.conf])
            self._spawn(f"mgr.{MGR_ID}", ["ceph-mgr", "-f", "-i", MGR_ID, "-c", self.conf])
            with self.admin(timeout=30) as ceph:
                self._add_osd(ceph)
                ceph.command("osd set-require-min-compat-client", version="mimic")
                self.wait_ready(ceph)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, grace: float = 15.0) -> None:
        """Stop every daemon this lab started (OSD, manager, monitor), by PID, and wait."""
        for name in reversed(list(self.procs)):
            labpids.stop(self._path("pids"), name, self.procs[name], grace)
        self.procs.clear()

    def revive(self) -> list[str]:
        """Start again each daemon of this lab that died (a session's cluster outlives
        one crashed manager) and wait until the cluster serves; returns their names."""
        dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
        for name in dead:
            self._spawn(name, self.argvs[name])
        if dead:
            with self.admin(timeout=30) as ceph:
                self.wait_ready(ceph, healthy=False)
        return dead

    def pids(self) -> dict[str, int]:
        """Daemon name -> PID of each daemon still running."""
        return {name: p.pid for name, p in self.procs.items() if p.poll() is None}

    # -- pools ----------------------------------------------------------------------

    def create_pool(self, name: str, pg_num: int = 8) -> None:
        """An RBD pool: created, application ``rbd`` enabled, ``rbd pool init`` done."""
        import rbd  # librbd bindings (Debian's python3-rbd)

        with self.admin() as ceph:
            if not ceph.pool_exists(name):
                ceph.pool_create(name, pg_num)
            ceph.pool_application_enable(name, "rbd")
            with ceph.ioctx(name) as ioctx:
                rbd.RBD().pool_init(ioctx, False)
            self.wait_ready(ceph, healthy=False)

    def delete_pool(self, name: str) -> None:
        with self.admin() as ceph:
            ceph.pool_delete(name)

    # -- readiness ----------------------------------------------------------------------

    def wait_ready(self, ceph: Ceph, timeout: float | None = None, healthy: bool = True) -> None:
        """Wait for the OSD up and in, the manager available and every PG of every pool
        active+clean; with ``healthy`` also for HEALTH_OK (not after start, where a
        transient warning such as slow requests on a busy machine must not fail a test)."""
        limit = timeout or self.ready_timeout
        deadline = time.monotonic() + limit
        why = "not asked yet"
        while time.monotonic() < deadline:
            self._check_alive()
            pgs = sum(int(p["pg_num"]) for p in ceph.command("osd pool ls", detail="detail"))
            why = _not_ready(ceph.status(), pgs, healthy)
            if not why:
                return
            time.sleep(0.5)
        raise CephError(cluster=self.conf, detail=f"not ready after {limit:g}s: {why}", errno=0)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise CephError(
                    cluster=self.conf,
                    detail=f"{name} exited with status {proc.returncode}; see "
                    f"{self._path('log', name + '.log')}",
                    errno=0,
                )

    # -- steps ------------------------------------------------------------------------

    def _prepare(self) -> None:
        for sub in (
            "bootstrap",
            f"mon/{MON_ID}",
            f"mgr/{MGR_ID}",
            f"osd/{OSD_ID}",
            "run",
            "log",
            "pids",
            "crash",
        ):
            os.makedirs(self._path(sub), exist_ok=True)
        self.fsid = str(uuid.uuid4())
        self.mon_ports = _two_free_ports()
        _write(self.conf, self._conf_text())
        admin_key = new_key()
        _write(self.admin_keyring, _keyring("client.admin", admin_key, _ALL))
        mgr_caps = {"mon": "allow profile mgr", "osd": "allow *", "mds": "allow *"}
        mgr_key = new_key()
        _write(self._path("mgr", MGR_ID, "keyring"), _keyring(f"mgr.{MGR_ID}", mgr_key, mgr_caps))
        boot = self._path("bootstrap", "mon.keyring")
        _write(
            boot,
            _keyring("mon.", new_key(), {"mon": "allow *"})
            + _keyring("client.admin", admin_key, _ALL)
            + _keyring(f"mgr.{MGR_ID}", mgr_key, mgr_caps),
        )
        monmap = self._path("bootstrap", "monmap")
        mon = ["ceph-mon", "--mkfs", "-i", MON_ID, "-c", self.conf, "--monmap", monmap]
        self._tool(
            ["monmaptool", "--create", "--clobber", "--fsid", self.fsid]
            + ["--addv", MON_ID, self.mon_host, monmap]
        )
        self._tool(mon + ["--keyring", boot])

    def _add_osd(self, ceph: Ceph) -> None:
        osd_uuid = str(uuid.uuid4())
        key = new_key()
        reply = ceph.command(
            "osd new", inbuf=f'{{"cephx_secret": "{key}"}}'.encode(), uuid=osd_uuid
        )
        osd_id = int(reply["osdid"]) if isinstance(reply, dict) else int(reply)
        if osd_id != OSD_ID:
            raise InternalError(detail=f"ceph gave OSD id {osd_id}, expected {OSD_ID}")
        _write(self._path("osd", str(OSD_ID), "keyring"), _keyring(f"osd.{OSD_ID}", key, {}))
        self._tool(
            ["ceph-osd", "--mkfs", "-i", str(OSD_ID), "--osd-uuid", osd_uuid, "-c", self.conf]
        )
        self._spawn(f"osd.{OSD_ID}", ["ceph-osd", "-f", "-i", str(OSD_ID), "-c", self.conf])

    def _tool(self, argv: list[str], timeout: float = 120.0) -> None:
        """Run a Ceph setup tool; on failure, its last error line (Ceph logs much before it)."""
        log = self._path("log", f"{os.path.basename(argv[0])}.out")
        try:
            with open(log, "ab") as out:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.PIPE,
                    timeout=timeout,
                    check=False,
                )
                out.write(proc.stderr)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CephError(cluster=self.conf, detail=f"{argv[0]}: {exc}", errno=0) from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines()]
            lines = [ln for ln in lines if ln] or [f"exit status {proc.returncode}"]
            errors = [ln for ln in lines if "error" in ln.lower()]
            detail = (errors or lines)[-1]
            raise CephError(cluster=self.conf, detail=f"{argv[0]}: {detail} (see {log})", errno=0)

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.argvs[name] = argv
        log = self._path("log", f"{name}.out")
        self.procs[name] = labpids.spawn(
            self._path("pids"), name, argv, log, self.workdir, self.die_with_parent
        )

    def _conf_text(self) -> str:
        d = self.workdir
        return f"""[global]
fsid = {self.fsid}
mon_host = {self.mon_host}
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = {d}/run
mon_cluster_log_file = {d}/log/cluster.log
crash_dir = {d}/crash
log_to_stderr = false
err_to_stderr = true
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_delete = true
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_max_pg_per_osd = 1000
mgr_stats_period = 1
mgr_initial_modules = iostat
mgr_tick_period = 1
paxos_propose_interval = 0.1
paxos_min_wait = 0.01

[client]
keyring = {d}/$cluster.$name.keyring

[mon]
admin_socket = {d}/run/$cluster-$name.asok
log_file = {d}/log/$name.log
mon_data = {d}/mon/$id
keyring = {d}/mon/$id/keyring

[mgr]
admin_socket = {d}/run/$cluster-$name.asok
log_file = {d}/log/$name.log
mgr_data = {d}/mgr/$id
keyring = {d}/mgr/$id/keyring
mgr_disabled_modules = {_MGR_DISABLED}

[osd]
admin_socket = {d}/run/$cluster-$name.asok
log_file = {d}/log/$name.log
osd_data = {d}/osd/$id
keyring = {d}/osd/$id/keyring
osd_objectstore = bluestore
bluestore_block_path = {d}/osd/block.$id
bluestore_block_create = true
bluestore_block_size = {self.osd_size}
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_memory_target = {self.osd_memory}
bluestore_cache_autotune = false
bluestore_cache_size = {128 << 20}
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2
"""


def capability(workdir: str) -> str:
    """Why a lab cannot run under ``workdir`` on this machine ("" when it can).

    BlueStore opens its file with O_DIRECT, which some filesystems (older
    tmpfs, some FUSE ones) refuse.
    """
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".odirect-probe")
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError as exc:
        return f"the filesystem of {workdir} refuses O_DIRECT ({exc.strerror}), BlueStore needs it"
    os.close(fd)
    os.unlink(probe)
    return ""


def _not_ready(status: dict[str, object], pgs: int, healthy: bool = True) -> str:
    """Why the cluster is not ready yet ("" when it is); ``pgs``: PGs the pools have."""
    health = status.get("health")
    checks = health.get("checks", {}) if isinstance(health, dict) else {}
    state = health.get("status") if isinstance(health, dict) else None
    if healthy and state != "HEALTH_OK":
        return f"{state}: {', '.join(sorted(checks)) if isinstance(checks, dict) else checks}"
    osdmap = status.get("osdmap")
    if (
        not isinstance(osdmap, dict)
        or osdmap.get("num_up_osds") != 1
        or (osdmap.get("num_in_osds") != 1)
    ):
        return "the OSD is not up and in"
    mgrmap = status.get("mgrmap")
    if not isinstance(mgrmap, dict) or not mgrmap.get("available"):
        return "no manager available"
    pgmap = status.get("pgmap")
    if not isinstance(pgmap, dict):
        return "no PG map yet"
    total = int(pgmap.get("num_pgs", 0))
    clean = sum(
        int(s.get("count", 0))
        for s in pgmap.get("pgs_by_state", [])
        if s.get("state_name") == "active+clean"
    )
    if total != pgs:
        return f"{total} of {pgs} PGs reported"
    if clean != total:
        return f"{clean} of {total} PGs active+clean"
    return ""


def _two_free_ports() -> tuple[int, int]:
    """Two ports on 127.0.0.1 free right now, below the kernel's ephemeral range.

    Ports from the ephemeral range (what binding port 0 gives) are also handed
    to outgoing connections, which could take one between this check and the
    monitor's bind; below that range only listeners compete.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    found: list[int] = []
    while len(found) < 2:
        port = rng.randrange(max(1024, low - 12000), low)
        if port in found or port in (3300, 6789) or not _bindable(port):
            continue
        found.append(port)
    return found[0], found[1]


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
