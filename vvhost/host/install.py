"""Install the libvirt hook: ``HOOKS_DIR/qemu.d/vvhost`` hands every qemu hook call
to ``vvhost hook qemu`` with this host's configuration, then libvirtd is told
(SIGHUP) so it notices the new file. ``HOOKS_DIR/vvhost-qemu`` (host/qemuwrap.py)
comes along: the emulator of domains with RBD disks in a RADOS namespace."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys

from ..errors import InvalidInput
from . import qemuwrap
from .config import HostConfig

HOOK_NAME = "vvhost"
TEMPLATE = """#!/bin/sh
# vvhost libvirt hook: binds a VM's vvols when it starts, unbinds them when it stops,
# rebinds on the destination of a migration.  Installed by `vvhost hook install`.
exec {python} -m vvhost hook qemu --host-conf {conf} "$@"
"""


def install(hooks_dir: str, host_conf: str, libvirtd_pid: int | None = None) -> str:
    if not os.path.isfile(host_conf):
        raise InvalidInput(detail=f"no host configuration at {host_conf} (run `vvhost host init`)")
    target_dir = os.path.join(hooks_dir, "qemu.d")
    os.makedirs(target_dir, exist_ok=True)
    path = os.path.join(target_dir, HOOK_NAME)
    body = TEMPLATE.format(
        python=shlex.quote(sys.executable), conf=shlex.quote(os.path.abspath(host_conf))
    )
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(body)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    ceph_dir = HostConfig.load(host_conf).ceph_dir
    qemuwrap.install(hooks_dir, ceph_dir)  # the QEMU of domains with RBD disks in a namespace
    reload(libvirtd_pid)
    return path


def uninstall(hooks_dir: str, libvirtd_pid: int | None = None) -> bool:
    path = os.path.join(hooks_dir, "qemu.d", HOOK_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(hooks_dir, qemuwrap.NAME))
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    reload(libvirtd_pid)
    return True


def reload(pid: int | None) -> None:
    """libvirtd reads hook files at start and on SIGHUP."""
    if pid is None:
        return
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as fh:
            comm = fh.read().strip()
    except FileNotFoundError:
        raise InvalidInput(detail=f"no process {pid}") from None
    if comm != "libvirtd":
        raise InvalidInput(detail=f"process {pid} is {comm}, not libvirtd")
    os.kill(pid, signal.SIGHUP)
