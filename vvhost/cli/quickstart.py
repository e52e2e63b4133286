"""The quickstart tour: a private control plane, a private libvirtd "host" with the
vvhost hook, an iSCSI endpoint, a datastore and a VM with two vvol disks.  Every
step is a real ``vvhost`` command; the guest writes and verifies its data itself,
and the bindings are shown appearing while it runs and disappearing when it stops.

    STATE/
      control/              vvhost serve's state dir (catalog, endpoint daemons)
      loopfs-XXXX/mnt/      a small XFS (reflink) on a loop device, where the
        array/              machine can loop-mount: the array of container gold
      hosts/kvm1/           the private libvirtd
      vvhost.sock, kvm1.conf, demo.serial, demo-clone.serial

With ``--ceph`` the array is a pool of a private single-node Ceph cluster
(STATE/ceph/, stopped by PID at the end), the endpoint is ``rbd`` and QEMU opens
the disks with librbd as the host's own Ceph user.

On XFS or RBD the tour shows COW mode (array snapshots): a snapshot of the
running VM with its stun time, a linked clone, an instant revert.  Without a loop
mount the array sits in STATE on the machine's filesystem: redo mode (qcow2
layers), and the tour says so.  Exit, Ctrl-C and ``--cleanup`` unmount the XFS
and detach its loop device.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import click
import libvirt

from .. import labpids
from ..daemon import ServerProcess, free_port
from ..guest import build_guest, guest_cmdline, parse_serial
from ..host.config import HostConfig
from ..host.install import install
from ..labhost import LibvirtHost
from ..loopfs import LoopFs, loop_capability, release

HOST = "kvm1"
HOST_IQN = "iqn.2026-11.org.example:kvm1"


class Tour:
    def __init__(self, socket_path: str, host_conf: str) -> None:
        self.socket = socket_path
        self.env = {**os.environ, "VVHOST_SOCKET": socket_path, "VVHOST_HOST_CONF": host_conf}

    def run(self, *args: str, show: bool = True) -> str:
        if show:
            click.secho("$ vvhost " + " ".join(shlex.quote(a) for a in args), bold=True)
        out = subprocess.run(
            [sys.executable, "-m", "vvhost", *args],
            capture_output=True,
            text=True,
            check=False,
            env=self.env,
        )
        if out.returncode != 0:
            raise click.ClickException(f"`vvhost {' '.join(args)}` failed: {out.stderr.strip()}")
        if show and out.stdout.strip():
            click.echo(out.stdout.rstrip())
        return out.stdout.strip()


def note(text: str) -> None:
    click.secho(f"# {text}", fg="green")


@dataclass(frozen=True)
class Storage:
    """Where the tour's VM lives: an array (added by the tour) and the endpoint
    protocol its host reaches it by."""

    array_args: tuple[str, ...] | None  # ``vvhost array add`` arguments; None: default
    protocol: str
    cow: bool  # the array snapshots by itself (COW mode) or VM snapshots are qcow2 layers


def run_quickstart(state_dir: str | None, keep: bool, cleanup: bool, ceph: bool = False) -> None:
    state = os.path.abspath(state_dir or tempfile.mkdtemp(prefix="vvhost-quickstart-"))
    if cleanup:
        remove(state)
        return
    server = ServerProcess(
        os.path.join(state, "control"), os.path.join(state, "vvhost.sock"), private_tgtd=True
    )
    lab = LibvirtHost(HOST, os.path.join(state, "hosts", HOST))
    try:
        with contextlib.ExitStack() as stack:
            store = ceph_array(stack, state) if ceph else reflink_array(stack, state)
            click.secho(
                f"Starting vvhost serve and a private libvirtd host {HOST!r} in {state}", fg="cyan"
            )
            server.start()
            try:
                lab.start()
                conf = os.path.join(state, f"{HOST}.conf")
                HostConfig(
                    name=HOST,
                    server=f"unix://{server.socket}",
                    libvirt=lab.uri,
                    protocol=store.protocol,
                    ceph_dir=os.path.join(state, "hosts", HOST, "ceph"),
                ).save(conf)
                install(lab.hooks_dir, conf)
                lab.sighup()  # returns once libvirtd has reread its hooks
                tour(Tour(server.socket, conf), lab, state, store)
                where(server, lab, conf, state)
                if keep:
                    click.secho("Everything keeps running until you press Ctrl-C.", fg="cyan")
                    wait_for_interrupt()
            finally:
                lab.stop()
                server.stop()
                click.secho(
                    "Stopped the VM host, the control plane and its endpoint daemons.", fg="cyan"
                )
    finally:
        if not keep and state_dir is None:
            shutil.rmtree(state, ignore_errors=True)


def reflink_array(stack: contextlib.ExitStack, state: str) -> Storage:
    """A directory on a fresh loop-mounted XFS (unmounted when ``stack`` closes),
    or the default array (with the reason shown) where this machine cannot loop-mount."""
    reason = loop_capability("xfs")
    if reason:
        note(f"no XFS loop mount here ({reason}): the array stays on this filesystem")
        return Storage(None, "iscsi", cow=False)
    stack.callback(click.secho, "Unmounted the XFS image and detached its loop device.", fg="cyan")
    mnt = stack.enter_context(LoopFs(state, "xfs", "2G"))  # unmounted before the line above
    click.secho(f"Loop-mounted a 2G XFS image (reflink) on {mnt} for the array", fg="cyan")
    return Storage(("xfs", "--path", os.path.join(mnt, "array")), "iscsi", cow=True)


def ceph_array(stack: contextlib.ExitStack, state: str) -> Storage:
    """A private single-node Ceph cluster (stopped by PID when ``stack`` closes) and
    the arguments that make one of its pools the tour's array."""
    from ..cephlab import CephLab

    click.secho("Starting a private Ceph cluster (1 mon, 1 mgr, 1 OSD on 127.0.0.1)", fg="cyan")
    stack.callback(click.secho, "Stopped the Ceph cluster.", fg="cyan")
    lab = stack.enter_context(CephLab(os.path.join(state, "ceph")))
    lab.create_pool("vvhost")
    click.secho(f"Ceph is healthy after {lab.startup_seconds:.1f} s; conf {lab.conf}", fg="cyan")
    args = ("ceph", "--backend", "rbd", "--pool", "vvhost", "--conf", lab.conf)
    return Storage((*args, "--keyring", lab.admin_keyring), "rbd", cow=True)


def tour(t: Tour, lab: LibvirtHost, state: str, store: Storage) -> None:
    if store.array_args:
        t.run("array", "add", *store.array_args)
        t.run("container", "create", "gold", "--capacity", "4G", "--array", store.array_args[0])
    else:
        t.run("container", "create", "gold", "--capacity", "4G")
    t.run("host", "add", HOST, "--iqn", HOST_IQN)
    if store.protocol == "rbd":
        assert store.array_args is not None
        note("an rbd endpoint: hosts open the images with QEMU's librbd, as their own Ceph user")
        t.run("pe", "create", "rbd0", "--protocol", "rbd", "--array", store.array_args[0])
    else:
        port = free_port()
        t.run("pe", "create", "iscsi0", "--protocol", "iscsi", "--portal", f"127.0.0.1:{port}")
    ds = t.run("datastore", "create", "ds1", "--capacity", "2G", "--container", "gold")
    t.run("datastore", "resolve", ds, "--host", HOST)
    note("building the test guest (a Debian cloud kernel and a busybox initramfs; cached)")
    guest = build_guest()
    serial = os.path.join(state, "demo.serial")
    cmds = ["write:vda:A:1:8", "write:vdb:B:4:4", "verify:vda:A:1:8", "verify:vdb:B:4:4", "sum:vdb"]
    t.run(
        "vm",
        "create",
        "demo",
        "--datastore",
        "ds1",
        "--memory",
        "256",
        "--disk",
        "64M",
        "--disk",
        "32M",
        "--protocol",
        store.protocol,
        "--kernel",
        guest.kernel,
        "--initrd",
        guest.initrd,
        "--cmdline",
        guest_cmdline(cmds),
        "--serial-log",
        serial,
    )
    note("defined, not running: nothing is bound")
    t.run("binding", "list")
    boot(t, "demo", serial, lab)
    note("the guest powered off; the hook's release unbound its disks")
    t.run("binding", "list")
    t.run("vm", "show", "demo")
    if store.cow:
        cow_snapshots(t, lab, state, serial)
    else:
        redo_snapshots(t, lab, serial)
    t.run("audit")


def redo_snapshots(t: Tour, lab: LibvirtHost, serial: str) -> None:
    note("snapshot mode: redo (no reflink on this array: each snapshot is a qcow2 layer)")
    note("a VM snapshot of both disks, then the guest overwrites vda with Z")
    t.run("vm", "snapshot", "demo", "before", "--description", "A and B written")
    set_cmdline(lab, "demo", ["write:vda:Z:1:8", "verify:vda:Z:1:8"])
    boot(t, "demo", serial, lab)
    t.run("vm", "snapshots", "demo", "--tree")
    note("revert to the snapshot: the guest finds A again (and not Z)")
    t.run("vm", "revert", "demo", "before")
    set_cmdline(lab, "demo", ["verify:vda:A:1:8", "verify:vdb:B:4:4"])
    boot(t, "demo", serial, lab)


def cow_snapshots(t: Tour, lab: LibvirtHost, state: str, serial: str) -> None:
    note("snapshot mode: COW (the array snapshots each disk: XFS reflinks, RBD snapshots)")
    set_cmdline(lab, "demo", ["verify:vda:A:1:8", "verify:vdb:B:4:4"], keep_running=True)
    t.run("vm", "start", "demo")
    wait_serial(serial, "VVTEST END")
    note("a VM snapshot of the running VM: paused only while the arrays cut (the stun)")
    out = t.run("vm", "snapshot", "demo", "before", "--description", "A and B written")
    stun = re.search(r"^stun_ms\s+(\S+)", out, re.M)
    click.secho(f"stun time: {stun.group(1) if stun else '?'} ms", fg="green")
    t.run("vm", "stop", "demo", "--force")
    report(serial)
    note("the guest overwrites vda with Z")
    set_cmdline(lab, "demo", ["write:vda:Z:1:8", "verify:vda:Z:1:8"])
    boot(t, "demo", serial, lab)
    t.run("vm", "snapshots", "demo", "--tree")
    note("a linked clone of the snapshot: its disks share the snapshot's blocks")
    clone_serial = os.path.join(state, "demo-clone.serial")
    t.run("vm", "clone", "demo", "demo-clone", "--snapshot", "before", "--linked",
          "--serial-log", clone_serial)  # fmt: skip
    set_cmdline(lab, "demo-clone", ["verify:vda:A:1:8", "verify:vdb:B:4:4"])
    boot(t, "demo-clone", clone_serial, lab)
    t.run("vm", "delete", "demo-clone")
    note("revert to the snapshot (the array shares the data, no copy): the guest finds A, not Z")
    started = time.monotonic()
    t.run("vm", "revert", "demo", "before")
    click.secho(f"reverted in {(time.monotonic() - started) * 1000:.0f} ms", fg="green")
    set_cmdline(lab, "demo", ["verify:vda:A:1:8", "verify:vdb:B:4:4"])
    boot(t, "demo", serial, lab)


def wait_serial(serial: str, line: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError), open(serial, errors="replace") as fh:
            if line in fh.read():
                return
        if time.monotonic() > deadline:
            raise click.ClickException(f"the guest did not say {line!r} within {timeout:g} s")
        time.sleep(0.2)


def set_cmdline(lab: LibvirtHost, name: str, cmds: list[str], keep_running: bool = False) -> None:
    """What `virsh edit` would do: give the guest other commands for its next boot."""
    conn = lab.connect()
    xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    line = guest_cmdline(cmds, keep_running=keep_running)
    new = re.sub(r"<cmdline>.*?</cmdline>", f"<cmdline>{line}</cmdline>", xml)
    conn.defineXML(new)


def boot(t: Tour, name: str, serial: str, lab: LibvirtHost) -> dict[str, Any]:
    t.run("vm", "start", name)
    note("running: the hook bound both disks through the endpoint")
    t.run("binding", "list")
    conn = lab.connect()
    dom = conn.lookupByName(name)
    deadline = time.monotonic() + 120
    while dom.isActive():
        if time.monotonic() > deadline:
            raise click.ClickException(f"VM {name} did not power off within 120 s")
        time.sleep(0.2)
    return report(serial)


def report(serial: str) -> dict[str, Any]:
    """Show what the guest printed; fail the tour if it reported a failure."""
    with open(serial, errors="replace") as fh:
        result = parse_serial(fh.read())
    note("what the guest printed on its serial console:")
    for line in result.lines:
        click.echo(f"  VVTEST {line}")
    if not result.ok:
        raise click.ClickException("the guest reported a failure")
    click.secho("ok: every command the guest ran on its vvols succeeded", fg="green")
    return {"ok": result.ok}


def where(server: ServerProcess, lab: LibvirtHost, conf: str, state: str) -> None:
    click.secho("\nWhere everything is:", fg="cyan")
    click.echo(f"  control plane   vvhost --socket {server.socket} vvol list")
    click.echo(f"  libvirt host    virsh -c '{lab.uri}' list --all")
    click.echo(f"  this VM         VVHOST_HOST_CONF={conf} vvhost vm show demo")
    click.echo(f"  state           {state}")


def wait_for_interrupt() -> None:
    stop = False

    def handler(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def remove(state: str) -> None:
    """--cleanup: stop endpoint and Ceph daemons a crashed run left (by their pidfiles), unmount
    its XFS image and detach the loop device, then delete the state directory."""
    server = ServerProcess(os.path.join(state, "control"))
    server.stop_endpoint_daemons()
    ceph = os.path.join(state, "ceph")
    if os.path.isdir(ceph):
        for pid in labpids.reap(ceph):
            click.echo(f"stopped Ceph daemon {pid}")
    for mnt in release(state):
        click.echo(f"unmounted {mnt}")
    shutil.rmtree(state, ignore_errors=True)
    click.echo(f"removed {state}")
