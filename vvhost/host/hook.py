"""The libvirt ``qemu`` hook: libvirt runs ``hooks/qemu.d/vvhost DOMAIN OP SUBOP EXTRA``
with the domain XML on stdin (as root, in libvirtd's mount namespace).

    prepare    bind every vvol of the domain for this host (one batch), then check
               each disk's <source> is the binding's handle; on a mismatch or an
               error, undo what this call bound and fail with one line
    release    unbind the domain's vvols for this host
    migrate    (destination) bind here and print the XML with the sources rewritten
    restore    likewise
    reconnect  (libvirtd restarted) re-create missing bindings of a running domain

Binding is "ensure bound" per (vvol, host): a VM start that finds its binding
(say, made by ``migrate`` just before ``prepare``) uses it; ``release`` drops it.
The hook never calls libvirt (that deadlocks) and every control plane call has
a timeout.  Domains without vvhost metadata pass straight through.
"""

from __future__ import annotations

from typing import TextIO

from ..client import Client
from ..errors import VvhostError
from . import domainxml as dx
from .config import HOOK_TIMEOUT, HostConfig


def ensure_bound(
    client: Client, host: str, vm: dx.VmMeta, pe: str | None
) -> tuple[dict[str, dict[str, object]], list[str]]:
    """Bind what is not bound yet (every disk's top and layers); return vvol -> handle
    and the vvols this call bound."""
    existing = {b["vvol"]: b for b in client.bindings(host=host)}
    wanted = vm.all_vvols()
    missing = [v for v in wanted if v not in existing]
    made: list[str] = []
    if missing:
        results = client.bind(missing, host, pe)
        made = [r["handle"]["vvol"] for r in results if r["ok"]]
        failed = [r for r in results if not r["ok"]]
        if failed:
            undo(client, host, made)
            raise VvhostError(
                detail=f"cannot bind vvol {failed[0]['vvol']}: {failed[0]['error']['message']}"
            )
        existing.update({r["handle"]["vvol"]: r["handle"] for r in results})
    return {v: existing[v] for v in wanted}, made


def undo(client: Client, host: str, vvols: list[str]) -> None:
    if vvols:
        client.unbind(vvols, host, drop_all=True)


def run(
    argv: list[str], stdin: TextIO, stdout: TextIO, stderr: TextIO, conf_path: str | None = None
) -> int:
    if len(argv) < 2:
        stderr.write("vvhost hook: usage: qemu DOMAIN OP [SUBOP [EXTRA]]\n")
        return 2
    domain, op = argv[0], argv[1]
    if op not in ("prepare", "release", "migrate", "restore", "reconnect"):
        return 0  # start, started, stopped, attach...: nothing to do
    xml = stdin.read(dx.MAX_XML + 1)
    if not dx.has_vvhost(xml):
        return 0
    try:
        root = dx.parse(xml)
        vm = dx.meta(root)
        if vm is None:
            return 0
        conf = HostConfig.load(conf_path)
        client = conf.client(HOOK_TIMEOUT)
        try:
            act(op, domain, root, vm, conf, client, stdout)
        finally:
            client.close()
    except VvhostError as exc:
        stderr.write(f"vvhost: {domain}: {exc.message}\n")
        return 1
    return 0


def act(
    op: str,
    domain: str,
    root: dx.ET.Element,
    vm: dx.VmMeta,
    conf: HostConfig,
    client: Client,
    stdout: TextIO,
) -> None:
    pe = vm.pe or conf.pe
    if op == "release":
        bound = {b["vvol"] for b in client.bindings(host=conf.name)}
        undo(client, conf.name, [v for v in vm.all_vvols() if v in bound])
        return
    handles, made = ensure_bound(client, conf.name, vm, pe)
    if op in ("migrate", "restore"):
        dx.point_sources(root, vm, handles)
        stdout.write(dx.tostring(root))
        return
    if op == "prepare":
        wrong = dx.check_sources(root, vm, handles)
        if wrong is not None:
            undo(client, conf.name, made)
            raise VvhostError(
                detail=f"disk {wrong} is now reached at {handles[vm.disks[wrong]]['uri']}, not "
                f"where the definition says; run `vvhost vm refresh {domain}`"
            )
