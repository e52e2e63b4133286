"""A running VM's memory and device state, kept in a ``memory`` vvol.

``vvhost vm snapshot --memory``: while the guest is paused for the snapshot,
libvirt writes its state to a local file (an external memory-only snapshot,
the disks excluded: the array snapshots them in the same pause); afterwards the
file is copied into a memory vvol through a binding and removed.

``vvhost vm revert`` to such a point: after the disks are reverted the state is
copied back into a local file and the domain is restored from it (libvirt runs
the hook's ``restore``, which binds the disks), so the guest carries on where
it was when the snapshot was taken.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import libvirt

from ..errors import VvhostError
from ..tools import qemuimg
from . import domainxml as dx
from .hook import undo
from .vms import VmError, VmManager, raw_source, raw_target

MiB = 1 << 20
SCRATCH = "/var/tmp"  # seen by libvirtd and its QEMU as well as by us


@contextlib.contextmanager
def scratch_file(name: str) -> Iterator[str]:
    """A path in a fresh private directory, removed afterwards."""
    where = tempfile.mkdtemp(prefix="vvhost-mem-", dir=SCRATCH)
    try:
        yield os.path.join(where, name)
    finally:
        shutil.rmtree(where, ignore_errors=True)


def save_paused(dom: libvirt.virDomain, path: str) -> int:
    """Write the paused domain's memory and device state to ``path``; the domain
    stays paused.  Returns the file's size."""
    root = dom.XMLDesc(0)
    disks = "".join(
        f"<disk name='{t}' snapshot='no'/>" for t in _targets(root)
    )  # the array snapshots the disks
    xml = (
        f"<domainsnapshot><memory snapshot='external' file='{path}'/>"
        f"<disks>{disks}</disks></domainsnapshot>"
    )
    try:
        dom.snapshotCreateXML(xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
    except libvirt.libvirtError as exc:
        raise VmError(detail=f"cannot save the VM's memory: {exc.get_error_message()}") from None
    return os.path.getsize(path)


def _targets(xml: str) -> list[str]:
    root = dx.parse(xml)
    return [
        t.get("dev", "")
        for t in (d.find("target") for d in root.findall("devices/disk"))
        if t is not None
    ]


def store(vms: VmManager, path: str, name: str, datastore: str | None, pe: str | None) -> str:
    """Copy ``path`` into a new memory vvol; returns its id (none left on failure)."""
    size = -(-os.path.getsize(path) // MiB) * MiB
    v = vms.client.vvol_create(None, size, type="memory", name=name, datastore=datastore, pe=pe)
    try:
        with vms.bound_here(v["id"], pe) as handle:
            qemuimg.convert(["-f", "raw", path], raw_target(handle))
    except BaseException:
        with contextlib.suppress(Exception):
            vms.client.vvol_delete(v["id"])
        raise
    return str(v["id"])


def load(vms: VmManager, vvol: str, nbytes: int, path: str, pe: str | None) -> None:
    """Copy a memory vvol back into the local file ``path`` (its first ``nbytes``)."""
    with vms.bound_here(vvol, pe) as handle:
        qemuimg.convert(raw_source(handle), ["-O", "raw", path], no_create=False)
    os.truncate(path, nbytes)


def restore(vms: VmManager, path: str, name: str) -> None:
    """Resume VM ``name`` from the state in ``path``; its disks' secrets are made
    current first, as for a start (see ``VmManager.secrets_for_start``)."""
    made = vms.secrets_for_start(vms.domain(name))
    try:
        vms.conn.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
    except libvirt.libvirtError as exc:
        with contextlib.suppress(VvhostError):
            undo(vms.client, vms.conf.name, made)
        raise VmError(
            detail=f"cannot resume from the saved memory: {exc.get_error_message()}"
        ) from None
