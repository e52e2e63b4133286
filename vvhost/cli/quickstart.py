"""The quickstart tour: every step is a real ``vvhost`` command against a real
``vvhost serve`` in a private state directory; data goes in and out through
real protocol endpoints (tgtd over iSCSI, qemu-storage-daemon over NBD) with
``qemu-io``, and is checked by pattern and checksum."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any

import click

from ..daemon import ServerProcess

MiB = 1 << 20
QEMU_IQN = "iqn.2008-11.org.linux-kvm"  # the initiator name qemu-io logs in with


class Tour:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def run(self, *args: str, show: bool = True) -> str:
        cmd = [sys.executable, "-m", "vvhost", "--socket", self.socket, *args]
        if show:
            click.secho("$ vvhost " + " ".join(shlex.quote(a) for a in args), bold=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise click.ClickException(f"`vvhost {' '.join(args)}` failed: {out.stderr.strip()}")
        if show and out.stdout.strip():
            click.echo(out.stdout.rstrip())
        return out.stdout.strip()

    def show(self, ref: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("vvol", "show", ref, "--json", show=False))
        return data


def qemu_io(uri: str, *commands: str) -> None:
    """Drive I/O through a binding with QEMU's own block layer, as a VM would."""
    argv = ["qemu-io", "-f", "raw"]
    for c in commands:
        argv += ["-c", c]
    click.secho(f"$ {' '.join(shlex.quote(x) for x in [*argv, uri])}", bold=True)
    out = subprocess.run([*argv, uri], capture_output=True, text=True, check=False)
    click.echo("\n".join(line for line in out.stdout.splitlines() if "ops/sec" not in line))
    if (
        out.returncode != 0
        or "failed" in out.stdout.lower()
        or "pattern verification" in out.stdout
    ):
        raise click.ClickException(f"qemu-io on {uri} failed: {out.stdout} {out.stderr}".strip())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def run_quickstart(state_dir: str | None, keep: bool) -> None:
    state = state_dir or tempfile.mkdtemp(prefix="vvhost-quickstart-")
    server = ServerProcess(os.path.abspath(state), private_tgtd=True)
    click.secho(f"Starting vvhost serve (state {state}, socket {server.socket})", fg="cyan")
    server.start()
    try:
        tour(Tour(server.socket))
    finally:
        server.stop()
        click.secho("vvhost serve and its endpoint daemons stopped.", fg="cyan")
        if keep:
            click.echo(
                f"State kept in {state}: `vvhost --socket {server.socket} serve --state-dir "
                f"{state}` brings it back."
            )
        else:
            shutil.rmtree(state, ignore_errors=True)


def tour(t: Tour) -> None:
    t.run("array", "show", "local")
    t.run("container", "create", "demo", "--capacity", "8G")
    t.run("host", "add", "kvm1", "--iqn", QEMU_IQN)
    t.run("pe", "create", "iscsi0", "--protocol", "iscsi", "--portal", f"127.0.0.1:{free_port()}")
    t.run("pe", "create", "nbd0", "--protocol", "nbd")
    disk = t.run(
        "vvol",
        "create",
        "--container",
        "demo",
        "--size",
        "256M",
        "--name",
        "disk0",
        "--meta",
        "vm=quickstart",
    )
    path = t.show(disk)["path"]

    click.secho(
        "# bind disk0 to host kvm1 through the iSCSI endpoint and write pattern A", fg="green"
    )
    uri = t.run("vvol", "bind", "disk0", "--host", "kvm1", "--pe", "iscsi0").split()[-1]
    qemu_io(uri, *(f"write -P 0x41 {off}M 1M" for off in (0, 16, 64, 200)))
    t.run("binding", "list")
    s1 = t.run("vvol", "snapshot", "disk0", "--name", "disk0@s1")
    state_a = digest(path)
    click.secho("# write pattern B over part of it, snapshot again, unbind", fg="green")
    qemu_io(uri, "write -P 0x42 16M 1M", "write -P 0x42 128M 1M")
    s2 = t.run("vvol", "snapshot", "disk0", "--name", "disk0@s2")
    state_b = digest(path)
    t.run("vvol", "unbind", "disk0", "--host", "kvm1")
    t.run("vvol", "bitmap", s2, "--base", s1, "--chunk", "1M")

    t.run("vvol", "revert", "disk0", "--to", s1)
    _check("revert to s1 gives back pattern A", digest(path) == state_a)
    _check("s2 survived the revert and still holds B", digest(t.show(s2)["path"]) == state_b)
    clone = t.run("vvol", "clone", s2, "--linked", "--name", "disk0-clone")
    click.secho("# the linked clone, bound over NBD, reads pattern B", fg="green")
    clone_uri = t.run("vvol", "bind", clone, "--host", "kvm1", "--pe", "nbd0").split()[-1]
    qemu_io(clone_uri, "read -P 0x42 16M 1M", "read -P 0x42 128M 1M", "read -P 0x41 64M 1M")
    t.run("vvol", "unbind", clone, "--host", "kvm1")
    click.secho("# the parent of a linked clone cannot be deleted:", fg="green")
    out = subprocess.run(
        [sys.executable, "-m", "vvhost", "--socket", t.socket, "vvol", "delete", s2],
        capture_output=True,
        text=True,
        check=False,
    )
    click.echo(f"$ vvhost vvol delete {s2}\n{out.stderr.strip()}  (exit {out.returncode})")
    t.run("vvol", "list")
    t.run("pe", "list")
    t.run("audit")


def _check(what: str, ok: bool) -> None:
    click.secho(f"{'ok' if ok else 'FAILED'}: {what}", fg="green" if ok else "red")
    if not ok:
        raise click.ClickException(f"quickstart check failed: {what}")
