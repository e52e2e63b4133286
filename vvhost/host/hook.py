"""The libvirt ``qemu`` hook: libvirt runs ``hooks/qemu.d/vvhost DOMAIN OP SUBOP EXTRA``
with the domain XML on stdin (as root, in libvirtd's mount namespace).

    prepare    bind every vvol of the domain for this host (one batch), then check
               each disk's <source> is the binding's handle; on a mismatch or an
               error, undo what this call bound and fail with one line
    release    unbind the domain's vvols for this host
    migrate    (destination of a live migration) bind here, on the endpoint this host
               is configured for (see ``incoming_pe``), and print the XML with the
               sources and the metadata's endpoint rewritten
    restore    bind here on the VM's endpoint and print the XML with the sources rewritten
    reconnect  (libvirtd restarted) re-create missing bindings of a running domain

Binding is "ensure bound" per (vvol, host): a VM start that finds its binding
(say, made by ``migrate`` just before ``prepare``) uses it; ``release`` drops it.
Bindings belong to a host, so the destination's hooks never touch the source's:
after a migration the source's ``release`` drops the source's bindings, and when
an incoming migration fails libvirt stops the incoming domain and the
destination's ``release`` drops the destination's.  A failing ``migrate`` drops
what it bound before it fails (libvirt then aborts the migration).
The hook never calls libvirt (that deadlocks) and every control plane call has
a timeout.  Domains without vvhost metadata pass straight through.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TextIO

from ..client import Client
from ..errors import VvhostError
from . import domainxml as dx
from . import handles as hd
from .config import HOOK_TIMEOUT, HostConfig


def ensure_bound(
    client: Client, host: str, vm: dx.VmMeta, pe: str | None, access: hd.HostAccess | None
) -> tuple[dict[str, dict[str, object]], list[str]]:
    """Bind what is not bound yet (every disk's top and layers); return vvol -> handle
    and the vvols this call bound.  ``access``: where this host keeps the credentials
    its bindings need (None: the bindings are for another host, fetch nothing)."""
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
    if access is not None:
        try:
            hd.prepare([existing[v] for v in wanted], access)
        except BaseException:
            undo(client, host, made)
            raise
    return {v: existing[v] for v in wanted}, made


def incoming_pe(client: Client, conf: HostConfig, vm: dx.VmMeta) -> str | None:
    """The endpoint a VM migrating to this host binds through: the host
    configuration's ``pe`` if it names one; else, among the endpoints the VM's
    datastore offers this host, the VM's own endpoint if it speaks the host's
    ``protocol``, or the first one that does; else the VM's own endpoint if it is
    offered at all (the VM keeps working where the host's protocol is missing)."""
    if conf.pe:
        return conf.pe
    if not vm.datastore:
        return vm.pe
    offered = client.datastore_resolve(vm.datastore, conf.name)["pes"]
    mine = [str(p["name"]) for p in offered if p["protocol"] == conf.protocol]
    if vm.pe in mine or (not mine and any(p["name"] == vm.pe for p in offered)):
        return vm.pe
    if mine:
        return mine[0]
    raise VvhostError(
        detail=f"datastore {vm.datastore} offers host {conf.name} no {conf.protocol} endpoint"
        + (f" and not the VM's endpoint {vm.pe}" if vm.pe else "")
    )


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
    if op == "release":
        bound = {b["vvol"] for b in client.bindings(host=conf.name)}
        undo(client, conf.name, [v for v in vm.all_vvols() if v in bound])
        return
    pe = incoming_pe(client, conf, vm) if op == "migrate" else vm.pe or conf.pe
    handles, made = ensure_bound(client, conf.name, vm, pe, conf.access(client))
    try:
        if op in ("migrate", "restore"):
            if op == "migrate" and pe:
                dx.set_meta(root, replace(vm, pe=pe))
            dx.point_sources(root, vm, handles)
            stdout.write(dx.tostring(root))
            return
        if op == "prepare":
            wrong = dx.check_sources(root, vm, handles)
            if wrong is not None:
                raise VvhostError(
                    detail=f"disk {wrong} is now reached at {handles[vm.disks[wrong]]['uri']}, "
                    f"not where the definition says; run `vvhost vm refresh {domain}`"
                )
    except BaseException:
        with contextlib.suppress(VvhostError):  # the first error is the one to report
            undo(client, conf.name, made)
        raise
