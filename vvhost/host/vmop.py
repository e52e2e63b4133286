"""The VM-operation kernel: what every ``vvhost vm`` operation shares.

Every operation on a VM (snapshot, revert, snapshot-delete, clone, migrate,
move-storage, extend-disk, delete) enters through :meth:`VmOps.operation`::

    lease      take the VM's lease in the control plane (owner = this host, pid and a
               random token; expiry short); another holder -> "busy: OP since T on HOST"
               (exit 4), or with ``wait`` poll until it is free or the time is up;
               an expired lease (its owner died) is taken over, and so is one of this
               host whose process is gone (a killed vvhost) without waiting for expiry
    renew      a thread renews the lease every ttl/3 while the operation runs
    recover    the config document's ``pending`` record, left by an operation cut
               short, is finished forward or back by the function the RECOVERY table
               names for its ``op``
    run        the operation itself, with the domain and the document (the document
               is saved compare-and-set on the config vvol's generation)
    release    the lease goes, whatever happened

Reads (``snapshots``, ``export``) use :meth:`VmOps.inspect`: they recover a pending
record only when they can take the lease (nobody is running an operation).
:class:`Stun` pauses or freezes a guest for the instant an operation needs it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import libvirt

from ..client import Client
from ..errors import InvalidInput, LeaseLost, NotFound, VmBusy, VvhostError
from ..faults import host_fault as fault
from .pending import Rec, parse
from .vmdoc import VmDoc
from .vms import VmError, VmManager

TTL_ENV = "VVHOST_VM_LEASE_TTL"
DEFAULT_TTL = 60.0
POLL = 0.5  # seconds between tries while waiting for a busy VM

RecoverFn = Callable[[VmManager, libvirt.virDomain, VmDoc, Rec], None]

# a pending record's op -> "module:function" (in vvhost.host) that finishes it forward or
# back.  The function leaves the document's other fields right; the kernel clears pending.
RECOVERY: dict[str, str] = {
    "snapshot": "snapshots:recover_snapshot",
    "revert": "snapshots:recover_revert",
    "drop": "snapshots:recover_drop",
    "redo-snapshot": "redo:recover_redo",
    "redo-revert": "redo:recover_redo",
    "redo-delete": "redo:recover_redo",
    "redo-drop": "redo:recover_redo",
    "move-storage": "movestorage:recover_move",
}


def recovery_for(op: str) -> RecoverFn | None:
    where = RECOVERY.get(op)
    if where is None:
        return None
    module, _, name = where.partition(":")
    fn: RecoverFn = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    return fn


def lease_ttl() -> float:
    raw = os.environ.get(TTL_ENV)
    try:
        return float(raw) if raw else DEFAULT_TTL
    except ValueError:
        raise InvalidInput(detail=f"{TTL_ENV}={raw!r} is not a number of seconds") from None


class Stun:
    """Pause (or freeze) a running domain for the duration of a ``with`` block and
    measure how long the guest was stopped."""

    def __init__(self, dom: libvirt.virDomain, quiesce: bool) -> None:
        self.dom = dom
        self.quiesce = quiesce
        self.running = bool(dom.isActive()) and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        self.seconds = 0.0

    def __enter__(self) -> Stun:
        self._t0 = time.perf_counter()
        if not self.running:
            return self
        try:
            if self.quiesce:
                self.dom.fsFreeze()
            else:
                self.dom.suspend()
        except libvirt.libvirtError as exc:
            what = "freeze the guest's filesystems (a guest agent is needed)"
            raise VmError(
                detail=f"cannot {what if self.quiesce else 'pause the VM'}: "
                f"{exc.get_error_message()}"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            if self.quiesce:
                self.dom.fsThaw()
            else:
                self.dom.resume()
        self.seconds = time.perf_counter() - self._t0


@dataclass
class HeldLease:
    """A lease this process holds, renewed by a thread until released."""

    client: Client
    renew_client: Client
    config: str
    token: str
    ttl: float
    taken_over: dict[str, Any] | None = None
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew, name="vm-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew_client.lease_renew(self.config, self.token, self.ttl)
            except LeaseLost as exc:
                self.lost = str(exc)
                return
            except VvhostError:
                continue  # the control plane may be back before the lease runs out

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(VvhostError):
            self.client.lease_release(self.config, self.token)
        self.renew_client.close()


def take_lease(vms: VmManager, config: str, op: str, wait: float | None) -> HeldLease:
    """The VM's lease for ``op``; busy -> VmBusy at once, or after ``wait`` seconds."""
    ttl = lease_ttl()
    deadline = None if wait is None else time.monotonic() + wait
    dead: int | None = None
    while True:
        try:
            got = vms.client.lease_acquire(config, vms.conf.name, op, os.getpid(), ttl, dead)
            break
        except VmBusy as busy:
            tried, dead = dead, _dead_owner(busy, vms.conf.name)
            if dead is not None and dead != tried:
                continue  # a vvhost of this host that was killed: take over at once
            if deadline is None or time.monotonic() >= deadline:
                raise
            time.sleep(POLL)
    held = HeldLease(
        vms.client, vms.conf.client(), config, got["token"], ttl, got.get("taken_over")
    )
    if held.taken_over:
        t = held.taken_over
        print(
            f"vvhost: took over the lease of {t['op']} since {t['since_utc']} on {t['host']} "
            "(its owner is gone); finishing what it left",
            file=sys.stderr,
        )
    fault("vm-lease", "acquired")
    held.start()
    return held


def _dead_owner(busy: VmBusy, host: str) -> int | None:
    """The epoch of a lease held by a process of this host that no longer exists."""
    f = busy.fields
    if f.get("host") != host or not isinstance(f.get("pid"), int) or f.get("epoch") is None:
        return None
    pid = int(f["pid"])
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return int(f["epoch"])
    except PermissionError:
        return None
    return None


class VmOps:
    """The kernel: lease, recovery, and the helpers every operation uses."""

    def __init__(self, vms: VmManager) -> None:
        self.vms = vms
        self.client = vms.client

    def config_of(self, dom: libvirt.virDomain) -> str:
        _root, meta = self.vms._meta(dom)
        if not meta.config:
            raise InvalidInput(detail=f"VM {dom.name()} has no config vvol")
        return meta.config

    def lease(self, name: str) -> dict[str, Any]:
        """Who holds the VM's lease, if anyone."""
        config = self.config_of(self.vms.domain(name))
        return {"vm": name, "config": config, "lease": self.client.lease_show(config)["lease"]}

    @contextlib.contextmanager
    def leased(self, name: str, op: str) -> Iterator[libvirt.virDomain]:
        """Hold the VM's lease for ``op`` (no document work)."""
        dom = self.vms.domain(name)
        held = take_lease(self.vms, self.config_of(dom), op, self.vms.lease_wait)
        try:
            yield dom
        finally:
            held.release()

    @contextlib.contextmanager
    def operation(self, name: str, op: str) -> Iterator[tuple[libvirt.virDomain, VmDoc]]:
        """The one entry point of a VM operation: lease, recover, run, release."""
        with self.leased(name, op) as dom:
            doc = VmDoc.load(self.client, self.config_of(dom))
            if doc.pending:
                self.recover(dom, doc)
            yield dom, doc

    def inspect(self, name: str) -> tuple[libvirt.virDomain, VmDoc]:
        """The domain and its document for reading; a pending record is recovered
        only when no operation holds the VM (else it is somebody's work in progress)."""
        dom = self.vms.domain(name)
        config = self.config_of(dom)
        doc = VmDoc.load(self.client, config)
        if doc.pending:
            with contextlib.suppress(VmBusy):
                held = take_lease(self.vms, config, "vm-recover", None)
                try:
                    doc = VmDoc.load(self.client, config)
                    if doc.pending:
                        self.recover(dom, doc)
                finally:
                    held.release()
        return dom, doc

    def recover(self, dom: libvirt.virDomain, doc: VmDoc) -> str:
        """Finish what a killed ``vvhost`` left: one consistent point, nothing orphaned."""
        rec = parse(doc.pending)
        what = rec.op if rec else ""
        fn = recovery_for(what)
        if rec is not None and fn is not None:
            fn(self.vms, dom, doc, rec)
        doc.pending = None
        doc.save(self.client)
        return what

    # -- helpers every operation uses -------------------------------------------------------
    def resolve(self, ref: str) -> str | None:
        try:
            return str(self.client.vvol(ref)["id"])
        except NotFound:
            return None

    def discard(self, snaps: Sequence[str | None]) -> None:
        """Drop the snapshots of a cut-short VM snapshot: prepared ones are aborted,
        taken ones deleted."""
        ids = [s for s in snaps if s]
        if ids:
            self.client.snapshot_abort(ids)
            self.drop(ids)

    def drop(self, vvols: Sequence[str | None]) -> None:
        """Delete vvols that may already be gone (idempotent)."""
        for vid in vvols:
            if vid:
                with contextlib.suppress(NotFound):
                    self.client.vvol_delete(vid)
