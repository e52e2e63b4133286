"""A private libvirtd per lab "host": many KVM hosts on one machine, for tests and demos.

Each host is one monolithic, root-mode ``libvirtd`` in its own mount and UTS
namespace. Inside it, private directories under ``workdir`` are bind-mounted
over libvirt's system paths, so every host has its own domains, hooks, logs and
state, and its own hostname (``name``)::

    workdir/                    outside the namespace           inside it
      etc/                      copy of /etc/libvirt            /etc/libvirt
        libvirtd.conf           rewritten on each start
        qemu.conf               rewritten on each start
        hooks/                  hooks_dir, starts empty         /etc/libvirt/hooks
        qemu/NAME.xml           persistent domains
        qemu/networks/          default.xml kept, autostart/ emptied
      run/                      emptied on each start           /run/libvirt
        libvirt-sock            uri = qemu+unix:///system?socket=<workdir>/run/libvirt-sock
        libvirt-sock-ro  libvirt-admin-sock
        qemu/NAME.pid           the qemu PID of a running domain
      lib/                      copy of /var/lib/libvirt        /var/lib/libvirt
      cache/                    copy of /var/cache/libvirt      /var/cache/libvirt
        qemu/capabilities/      probed on first use (~0.8 s per emulator), then kept
      log/                      copy of /var/log/libvirt        /var/log/libvirt
        libvirtd.log            log_path: libvirtd's log, stdout and stderr
        qemu/NAME.log           a domain's qemu log (stdio_handler = "file")
      nbd-tls/                  nbd_tls_dir: the host's NBD-over-TLS client credentials
                                (qemu.conf nbd_tls_x509_cert_dir; host.conf nbd_tls_dir)
      libvirtd.pid              libvirtd's pidfile (-p)

Process tree (``pid`` is libvirtd's)::

    python -c REAPER                       outside; PR_SET_CHILD_SUBREAPER, reaps at once
      └─ unshare --mount --uts --propagation private sh -c \\
             'mkdir -p /etc/libvirt && mount --bind <workdir>/etc /etc/libvirt && ... &&
              hostname NAME && exec libvirtd [--listen] -f /etc/libvirt/libvirtd.conf -p ...'
         = libvirtd                        same PID through both execs
             └─ qemu-system-x86_64 ...     daemonized by libvirtd: its parent is the reaper

The reaper is there because qemu processes are orphans by design: without a
subreaper they go to PID 1, and a PID 1 that reaps late (2 s on the lab VMs)
makes every destroy, shutdown and migration wait for it in libvirt's
kill-and-poll loop.

``--listen`` (TCP on 127.0.0.1:tcp_port, no auth, no TLS) is there only with a
``tcp_port``: that is what a peer-to-peer live migration to this host connects
to (``tcp_uri``); the incoming qemu listens in ``migration_ports`` on the
address of the migrate URI (``tcp://127.0.0.1``).

With a ``net`` (:class:`vvhost.labnet.LabNet`) the host also gets a network
namespace of its own, linked to the lab bridge by a veth pair: libvirtd listens
there on every address, ``address`` is the host's address on the bridge, and
``tcp_uri`` and migrate URIs use it; endpoints the host uses must listen on the
bridge (``net.gateway``). ``hidden`` directories of the machine (a control
plane's socket and state, a database's socket) get an empty tmpfs over them in
the host's mount namespace: the host, its hook and its QEMUs cannot see them.

In qemu.conf domains run as root with no security driver, no cgroups, no /dev
namespace and no virtlogd (stdio_handler = "file"), so their qemu processes stay
in the host's mount namespace. That is how ``stop()`` finds everything the host
started: it destroys the running domains, stops libvirtd (SIGTERM, then
SIGKILL), and SIGKILLs whatever else is still in the namespace. The namespace
is held open by a file descriptor from ``start()`` to the end of ``stop()``, so
its identity cannot be reused meanwhile.

A hook script goes into ``hooks_dir`` (``qemu`` or ``qemu.d/NAME``); libvirtd
rescans that directory on ``sighup()``. A hook must not call back into the same
libvirtd: that deadlocks.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import libvirt

from .errors import VvhostError
from .labnet import LabNet

POLL = 0.02
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) less the NUL
LIBVIRTD = "/usr/sbin/libvirtd"
RELOAD_MARK = "Reloading configuration on SIGHUP"  # logged by the reload thread itself
RELOAD_THREAD = "daemon-reload"  # that thread's name in /proc/PID/task/*/comm

# (directory under workdir, the system path it is bind-mounted over and copied from)
MOUNTS: tuple[tuple[str, str], ...] = (
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
)

# argv[1:] is the command; exits with its status once every descendant is reaped
REAPER = """\
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("vvhost lab reaper: prctl(PR_SET_CHILD_SUBREAPER) failed")
child = os.fork()
if child == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
status = 1
while True:
    try:
        pid, raw = os.wait()
    except ChildProcessError:
        sys.exit(status)
    if pid == child:
        code = os.waitstatus_to_exitcode(raw)
        status = code if code >= 0 else 128 - code
"""


class LabHostError(VvhostError):
    code = "lab-host"
    template = "lab host {host}: {detail}"


def _ns_id(pid: int | str) -> tuple[int, int] | None:
    """The (device, inode) of a process's mount namespace, or None when it is gone."""
    try:
        st = os.stat(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _exited(pidfd: int, timeout: float) -> bool:
    """True once the process behind ``pidfd`` has exited (zombie or reaped)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


class LibvirtHost:
    """One lab host: a private libvirtd in its own mount and UTS namespace (see module doc)."""

    def __init__(
        self,
        name: str,
        workdir: str,
        tcp_port: int | None = None,
        migration_ports: tuple[int, int] | None = None,
        net: LabNet | None = None,
        hidden: Sequence[str] = (),
    ) -> None:
        if not name or any(c.isspace() or c in "/\"'\\" for c in name):
            raise LabHostError(host=name, detail="a host name is one word")
        self.name = name
        self.workdir = os.path.abspath(workdir)
        self.tcp_port = tcp_port
        self.migration_ports = migration_ports
        self.net = net  # with a lab network: its own network namespace, linked to the bridge
        self.address: str | None = None  # on the lab network, once started
        # directories of the machine this host must not see (an empty tmpfs over each)
        self.hidden = tuple(os.path.abspath(d) for d in hidden)
        # stable for (name, workdir), different between hosts: migration refuses equal ones
        self.host_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vvhost-lab:{name}:{self.workdir}"))
        self._reaper: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None  # libvirtd, the reaper's child
        self._pidfd: int | None = None
        self._ns_fd: int | None = None
        self._conns: list[Any] = []
        # (reaper, namespace fd) of daemons replaced by restart_daemon(): their domains
        # keep running in that namespace until stop()
        self._earlier: list[tuple[subprocess.Popen[bytes], int]] = []
        longest = self.path("run", "libvirt-admin-sock")  # libvirtd's longest socket name
        if len(os.fsencode(longest)) > SUN_PATH_MAX:
            raise LabHostError(host=name, detail=f"socket path too long: {longest}")

    def __repr__(self) -> str:
        return f"LibvirtHost({self.name!r}, {self.workdir!r}, pid={self.pid})"

    # -- paths and addresses ---------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    @property
    def socket_path(self) -> str:
        return self.path("run", "libvirt-sock")

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket_path}"

    @property
    def tcp_uri(self) -> str | None:
        if self.tcp_port is None:
            return None
        return f"qemu+tcp://{self.address or '127.0.0.1'}:{self.tcp_port}/system"

    @property
    def hooks_dir(self) -> str:
        """The real directory that is /etc/libvirt/hooks inside this host."""
        return self.path("etc", "hooks")

    @property
    def log_path(self) -> str:
        return self.path("log", "libvirtd.log")

    @property
    def nbd_tls_dir(self) -> str:
        """Where this host keeps its client certificate for NBD disks with tls='yes'."""
        return self.path("nbd-tls")

    @property
    def pidfile(self) -> str:
        return self.path("libvirtd.pid")

    @property
    def pid(self) -> int | None:
        """libvirtd's PID while it runs (None before start() and after stop())."""
        if self._pidfd is None or _exited(self._pidfd, 0):
            return None
        return self._pid

    # -- configuration -----------------------------------------------------------------------

    def libvirtd_conf(self) -> str:
        lines = [
            f"# lab host {self.name}: written by vvhost.labhost on each start",
            f'unix_sock_dir = "{self.path("run")}"',
            'unix_sock_rw_perms = "0700"',
            'auth_unix_rw = "none"',
            'auth_unix_ro = "none"',
            f'host_uuid = "{self.host_uuid}"',
            "listen_tls = 0",
            "audit_level = 0",
            f'log_outputs = "2:file:{self.log_path}"',
            # info from the daemon itself (sighup() waits on its reload line), else warnings
            'log_filters = "2:daemon.libvirtd 3:*"',
        ]
        if self.tcp_port is not None:
            lines += [
                "listen_tcp = 1",
                f'tcp_port = "{self.tcp_port}"',
                # in its own network namespace the address comes after the daemon
                f'listen_addr = "{"0.0.0.0" if self.net else "127.0.0.1"}"',
                'auth_tcp = "none"',
            ]
        else:
            lines.append("listen_tcp = 0")
        return "\n".join(lines) + "\n"

    def qemu_conf(self) -> str:
        lines = [
            f"# lab host {self.name}: written by vvhost.labhost on each start",
            'stdio_handler = "file"',  # no virtlogd
            "cgroup_controllers = [ ]",
            'security_driver = "none"',
            "dynamic_ownership = 0",
            "remember_owner = 0",
            "namespaces = [ ]",  # qemu stays in this host's mount namespace
            'user = "root"',
            'group = "root"',
            # NBD disks with tls='yes' present this host's client certificate from here
            f'nbd_tls_x509_cert_dir = "{self.nbd_tls_dir}"',
            # no migration_address: libvirt refuses 127.0.0.1 there ("the address of the
            # local machine"); the incoming qemu listens where the migrate URI says
        ]
        if self.migration_ports is not None:
            low, high = self.migration_ports
            lines += [f"migration_port_min = {low}", f"migration_port_max = {high}"]
        return "\n".join(lines) + "\n"

    def _prepare(self, keep_run: bool = False) -> None:
        """Lay out workdir: copy what is missing, empty run/ (unless ``keep_run``: a
        daemon restart that must find its running domains), write both configs."""
        other = self._pidfile_daemon()
        if other is not None:
            raise LabHostError(host=self.name, detail=f"a libvirtd runs here already: PID {other}")
        os.makedirs(self.workdir, exist_ok=True)
        for sub, system in MOUNTS:
            target = self.path(sub)
            if sub == "run" and not keep_run:  # a tmpfs on a real host: gone after a reboot
                shutil.rmtree(target, ignore_errors=True)
                os.makedirs(target)
            elif not os.path.isdir(target):
                if os.path.isdir(system):
                    shutil.copytree(system, target, symlinks=True)
                else:
                    os.makedirs(target)
                if sub == "etc":
                    self._scrub_etc(target)
        os.makedirs(self.path("log", "qemu"), exist_ok=True)
        os.makedirs(self.nbd_tls_dir, mode=0o700, exist_ok=True)
        for fname, text in (
            ("libvirtd.conf", self.libvirtd_conf()),
            ("qemu.conf", self.qemu_conf()),
        ):
            with open(self.path("etc", fname), "w", encoding="utf-8") as fh:
                fh.write(text)

    @staticmethod
    def _scrub_etc(etc: str) -> None:
        """Nothing autostarts, and no hook of the real host comes along."""
        for sub in ("qemu/networks/autostart", "qemu/autostart", "storage/autostart", "hooks"):
            path = os.path.join(etc, sub)
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)

    def _pidfile_daemon(self) -> int | None:
        """The PID of a libvirtd still running with our pidfile (a lost earlier start)."""
        try:
            with open(self.pidfile, encoding="ascii") as fh:
                pid = int(fh.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().split(b"\0")
        except (OSError, ValueError):
            return None
        if _exe(pid) == LIBVIRTD and os.fsencode(self.pidfile) in cmdline:
            return pid
        return None

    def _argv(self) -> list[str]:
        steps = []
        for sub, system in MOUNTS:
            steps.append(f"mkdir -p {shlex.quote(system)}")
            steps.append(f"mount --bind {shlex.quote(self.path(sub))} {shlex.quote(system)}")
        for hidden in self.hidden:
            steps.append(f"mount -t tmpfs -o size=64k,mode=0700 vvhidden {shlex.quote(hidden)}")
        steps.append(f"hostname {shlex.quote(self.name)}")
        daemon = [LIBVIRTD, "-f", "/etc/libvirt/libvirtd.conf", "-p", self.pidfile]
        if self.tcp_port is not None:
            daemon.insert(1, "--listen")
        script = " && ".join(steps) + " && exec " + shlex.join(daemon)
        spaces = ["--mount", "--uts"] + (["--net"] if self.net else [])
        unshare = ["unshare", *spaces, "--propagation", "private", "sh", "-c", script]
        return [sys.executable, "-c", REAPER, *unshare]

    # -- lifecycle ----------------------------------------------------------------------------

    def restart_daemon(self, timeout: float = 30) -> LibvirtHost:
        """Stop libvirtd alone (its domains keep running) and start it again, as an
        upgrade or crash of libvirtd would: the new daemon reconnects to them."""
        if self._pidfd is None or self._reaper is None or self._ns_fd is None:
            raise LabHostError(host=self.name, detail="not running")
        if self.net is not None:
            raise LabHostError(host=self.name, detail="a host on a lab network is not restarted")
        self.close()
        self._terminate(self._pidfd, timeout)
        os.close(self._pidfd)
        self._earlier.append((self._reaper, self._ns_fd))
        self._reaper = self._pid = self._pidfd = self._ns_fd = None
        return self.start(timeout, keep_run=True)

    def start(self, timeout: float = 30, keep_run: bool = False) -> LibvirtHost:
        """Spawn libvirtd; return once a client connection gets an answer."""
        if self.pid is not None:
            return self
        self._prepare(keep_run)
        with open(self.log_path, "ab") as log:
            log.write(f"# vvhost: start lab host {self.name} at {time.ctime()}\n".encode())
            log.flush()
            self._reaper = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
            if self.net is not None and self._pid is not None:
                self.address = self.net.attach(self._pid)
        except BaseException:
            self.stop()
            raise
        return self

    def _child(self) -> int | None:
        """The reaper's child: unshare, then sh, then libvirtd, all one PID."""
        assert self._reaper is not None
        rpid = self._reaper.pid
        try:
            with open(f"/proc/{rpid}/task/{rpid}/children", encoding="ascii") as fh:
                kids = [int(k) for k in fh.read().split()]
        except (OSError, ValueError):
            return None
        return kids[0] if len(kids) == 1 else None  # none yet, or an orphan being reaped

    def _wait_ready(self, timeout: float) -> None:
        assert self._reaper is not None
        deadline = time.monotonic() + timeout
        own_ns = _ns_id("self")
        while True:
            if self._reaper.poll() is not None:
                raise LabHostError(
                    host=self.name,
                    detail=f"libvirtd exited with status {self._reaper.returncode}: "
                    f"{self._log_tail() or '(no output)'}",
                )
            if self._pidfd is None:
                child = self._child()
                if child is not None:
                    with contextlib.suppress(ProcessLookupError):
                        self._pid, self._pidfd = child, os.pidfd_open(child)
            elif (
                _exe(self._pid or 0) == LIBVIRTD  # not unshare or sh any more
                and _ns_id(self._pid or 0) != own_ns
                and os.path.exists(self.socket_path)
                and self._answers()
            ):
                break
            if time.monotonic() > deadline:
                raise LabHostError(host=self.name, detail=f"libvirtd not ready in {timeout} s")
            time.sleep(POLL)
        self._ns_fd = os.open(f"/proc/{self._pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)

    def _answers(self) -> bool:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return False
        try:
            conn.getHostname()
            return True
        except libvirt.libvirtError:
            return False
        finally:
            conn.close()

    def _log_tail(self, lines: int = 4) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                text = fh.read().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:] if line.strip())

    def stop(self, timeout: float = 10) -> None:
        """Destroy running domains, stop libvirtd, kill what is left in the namespace.

        Persistent definitions stay in etc/qemu; nothing is undefined.
        """
        if self.pid is not None:
            self._destroy_domains()
        self.close()
        try:
            if self._pidfd is not None:
                self._terminate(self._pidfd, timeout)
            if self._ns_fd is not None:
                self._kill_namespace(self._ns_fd, timeout)
            for reaper, ns_fd in self._earlier:
                self._kill_namespace(ns_fd, timeout)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    reaper.wait(timeout)
            if self._reaper is not None:
                try:  # exits once libvirtd and every orphan of it are reaped
                    self._reaper.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._reaper.kill()
                    self._reaper.wait()
        finally:
            for fd in (self._pidfd, self._ns_fd, *(ns for _r, ns in self._earlier)):
                if fd is not None:
                    os.close(fd)
            self._earlier = []
            self._reaper = self._pid = self._pidfd = self._ns_fd = None
            self.address = None

    @staticmethod
    def _terminate(pidfd: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if not _exited(pidfd, timeout):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                _exited(pidfd, timeout)

    def _destroy_domains(self) -> None:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return  # the namespace sweep still gets the qemu processes
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()

    def _kill_namespace(self, ns_fd: int, timeout: float) -> None:
        """SIGKILL every process still in the mount namespace ``ns_fd`` and wait for it."""
        st = os.fstat(ns_fd)
        ns = (st.st_dev, st.st_ino)
        pidfds = []
        try:
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or _ns_id(entry) != ns:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    pidfd = os.pidfd_open(int(entry))
                    pidfds.append(pidfd)
                    if _ns_id(entry) == ns:  # checked again now that the pidfd pins it
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            for pidfd in pidfds:
                if not _exited(pidfd, timeout):
                    raise LabHostError(host=self.name, detail="a process survived SIGKILL")
        finally:
            for pidfd in pidfds:
                os.close(pidfd)

    def sighup(self, timeout: float = 10) -> None:
        """SIGHUP libvirtd and wait until its reload (which rescans hooks_dir) is over."""
        pid = self.pid
        if pid is None or self._pidfd is None:
            raise LabHostError(host=self.name, detail="not running")
        offset = os.path.getsize(self.log_path)
        signal.pidfd_send_signal(self._pidfd, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        # the reload thread logs the mark first thing: once it is there, the thread's end is
        # the reload's end
        while RELOAD_MARK not in self._log_since(offset) or self._reloading(pid):
            if time.monotonic() > deadline:
                raise LabHostError(host=self.name, detail=f"no reload within {timeout} s")
            time.sleep(POLL)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    @staticmethod
    def _reloading(pid: int) -> bool:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return False
        for tid in tasks:
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as fh:
                    if fh.read().strip() == RELOAD_THREAD:
                        return True
        return False

    # -- clients ------------------------------------------------------------------------------

    def connect(self) -> Any:
        """A libvirt.virConnect to this host; ``close()`` (and ``stop()``) close it."""
        conn = libvirt.open(self.uri)
        self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection that ``connect()`` handed out."""
        conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def run_in_ns(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float | None = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this host's mount and UTS namespace (``virsh`` talks to it there)."""
        pid = self.pid
        if pid is None:
            raise LabHostError(host=self.name, detail="not running")
        return subprocess.run(
            ["nsenter", "--target", str(pid), "--mount", "--uts", "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )
