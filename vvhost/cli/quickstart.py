"""The quickstart tour: every step is a real ``vvhost`` command against a real
``vvhost serve`` in a private state directory, and data is checked by checksum."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import click

from ..daemon import ServerProcess

MiB = 1 << 20


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


def write_pattern(path: str, label: bytes, offsets: list[int], length: int = MiB) -> None:
    block = (label * (length // len(label) + 1))[:length]
    with open(path, "r+b") as fh:
        for off in offsets:
            fh.seek(off)
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def run_quickstart(state_dir: str | None, keep: bool) -> None:
    state = state_dir or tempfile.mkdtemp(prefix="vvhost-quickstart-")
    server = ServerProcess(os.path.abspath(state))
    click.secho(f"Starting vvhost serve (state {state}, socket {server.socket})", fg="cyan")
    server.start()
    try:
        tour(Tour(server.socket))
    finally:
        server.stop()
        click.secho("vvhost serve stopped.", fg="cyan")
        if keep:
            click.echo(
                f"State kept in {state}: `vvhost serve --state-dir {state} "
                f"--socket {server.socket}` brings it back."
            )
        else:
            shutil.rmtree(state, ignore_errors=True)


def tour(t: Tour) -> None:
    t.run("array", "show", "local")
    t.run("container", "create", "demo", "--capacity", "8G")
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
    click.secho(f"# writing pattern A (4 x 1 MiB) into {path}", fg="green")
    write_pattern(path, b"A", [0, 16 * MiB, 64 * MiB, 200 * MiB])
    state_a = digest(path)
    s1 = t.run("vvol", "snapshot", disk, "--name", "disk0@s1")
    click.secho("# writing pattern B over part of it", fg="green")
    write_pattern(path, b"B", [16 * MiB, 128 * MiB])
    state_b = digest(path)
    s2 = t.run("vvol", "snapshot", disk, "--name", "disk0@s2")
    t.run("vvol", "bitmap", s2, "--base", s1, "--chunk", "1M")
    t.run("vvol", "revert", disk, "--to", s1)
    after = digest(path)
    _check("revert to s1 gives back pattern A", after == state_a)
    _check("s2 survived the revert and still holds B", digest(t.show(s2)["path"]) == state_b)
    clone = t.run("vvol", "clone", s2, "--linked", "--name", "disk0-clone")
    _check("linked clone of s2 holds B", digest(t.show(clone)["path"]) == state_b)
    click.secho("# the parent of a linked clone cannot be deleted:", fg="green")
    out = subprocess.run(
        [sys.executable, "-m", "vvhost", "--socket", t.socket, "vvol", "delete", s2],
        capture_output=True,
        text=True,
        check=False,
    )
    click.echo(f"$ vvhost vvol delete {s2}\n{out.stderr.strip()}  (exit {out.returncode})")
    t.run("vvol", "list")
    t.run("container", "show", "demo")
    t.run("audit")


def _check(what: str, ok: bool) -> None:
    click.secho(f"{'ok' if ok else 'FAILED'}: {what}", fg="green" if ok else "red")
    if not ok:
        raise click.ClickException(f"quickstart check failed: {what}")
