"""The ``iscsi`` endpoint: one ``tgtd`` per PE, driven with ``tgtadm``.

    tgtd -f -C <control port> --iscsi portal=<portal>
      target tid=1  iqn.<prefix>:<pe>.<host-a>   ACL: host-a's initiator name
        LUN 1  -> ARRAY/vvols/<vvol>.raw   serial = vvol id (hex), SCSI id = vvol id
        LUN 2  ...
      target tid=2  iqn.<prefix>:<pe>.<host-b>   ACL: host-b's initiator name
      target tid=N  iqn.<prefix>:<pe>.shared     ACL: ALL (bindings that ask for shared access)

A host reaches LUN L as ``iscsi://<portal>/<target iqn>/<L>``.

After a vvol grew, ``refresh`` has tgtd reopen the LUN's backing file in place
(same LUN number, serial and SCSI id; sessions stay logged in), after which
READ CAPACITY reports the new size: an initiator sees it when it asks again
(QEMU's iscsi driver does on ``block_resize``). It reopens only a LUN whose size
changed: see :meth:`Tgtadm.lun_reopen` for the one risk of a reopen.

Trust: every request goes to the tgtd this endpoint spawned (or adopted by its
exact command line), checked on each connection by the PID behind the control
socket; a control port held by any other tgtd is refused with
:class:`ForeignDaemon`.  The endpoint is alive only while that same tgtd
listens on the portal.  A target's ACL is rewritten from the attachment (the
current host row) whenever it differs, and ``sync_targets`` drops targets the
catalog no longer has, so a removed host's initiator keeps nothing.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..errors import VvhostError
from ..tools import EndpointError
from ..tools.tgtadm import Lun, Target, Tgtadm, tgt_megabytes
from ..tools.tgtd_ipc import ForeignDaemon, holder
from .base import Attachment, attach_each, data_size
from .listen import portal_listens
from .proc import Daemon

DEFAULT_IQN_PREFIX = "iqn.2026-11.io.vvhost"


def serial_for(vvol_id: str) -> str:
    return vvol_id.replace("-", "")


def acl_for(initiator: str | None, shared: bool) -> tuple[list[str], list[str]]:
    """(names, addresses) a target must admit: everybody for a shared target (see
    the ACL semantics in tools/tgtadm.py), else its host's initiator name only
    (nobody when the host has none)."""
    if shared:
        return [], ["ALL"]
    return ([initiator] if initiator else []), []


class IscsiEndpoint:
    protocol = "iscsi"

    def __init__(self, name: str, portal: str, control_port: int, rundir: str) -> None:
        self.name = name
        self.portal = portal
        self.control_port = control_port
        self.tgtadm = Tgtadm(control_port, owner=lambda: self.daemon.pid)
        self.daemon = Daemon(
            f"tgtd-{name}",
            ["tgtd", "-f", "-C", str(control_port), "--iscsi", f"portal={portal}"],
            rundir,
            ready=self.tgtadm.ping,
        )
        self._acls: dict[int, tuple[list[str], list[str]]] = {}  # tid -> (names, addresses)

    def start(self) -> None:
        os.makedirs(self.daemon.rundir, exist_ok=True)
        try:
            self.daemon.start()
        except EndpointError as exc:
            pid = holder(self.control_port)
            if pid is not None and pid != self.daemon.pid:
                raise ForeignDaemon(port=self.control_port, pid=pid, ours="") from exc
            raise
        if not portal_listens(self.daemon.pid, self.portal):
            pid = self.daemon.pid
            if not self.daemon.adopted:
                self.daemon.stop(timeout=0)
            raise EndpointError(
                tool=f"tgtd-{self.name}",
                detail=f"portal {self.portal} is held by another process: the tgtd vvhost "
                f"started (pid {pid}) does not listen there",
            )
        self._acls = {t.tid: (t.initiator_names, t.initiator_addresses) for t in self.tgtadm.show()}

    def stop(self) -> None:
        self.daemon.stop(timeout=0)  # tgtd ignores SIGTERM
        self._acls.clear()

    def alive(self) -> bool:
        return self.daemon.alive() and portal_listens(self.daemon.pid, self.portal)

    def _ensure_target(self, a: Attachment) -> None:
        assert a.tid is not None and a.target_iqn is not None
        wanted = acl_for(a.initiator, a.shared)
        if self._acls.get(a.tid) == wanted:
            return
        shown = {t.tid: t for t in self.tgtadm.show()}
        if a.tid not in shown:
            self.tgtadm.target_new(a.tid, a.target_iqn)
            shown[a.tid] = Target(a.tid, a.target_iqn)
        elif shown[a.tid].iqn != a.target_iqn:  # another target took the number: replace it
            self.tgtadm.target_delete(a.tid)
            self.tgtadm.target_new(a.tid, a.target_iqn)
            shown[a.tid] = Target(a.tid, a.target_iqn)
        self._set_acl(shown[a.tid], wanted)

    def _set_acl(self, t: Target, wanted: tuple[list[str], list[str]]) -> None:
        """Make target ``t`` admit exactly ``wanted`` (names, addresses). Stale entries
        go before new ones are added, so access never widens in between."""
        names, addresses = wanted
        for addr in t.initiator_addresses:
            if addr not in addresses:
                self.tgtadm.unbind_address(t.tid, addr)
        for name in t.initiator_names:
            if name not in names:
                self.tgtadm.unbind_name(t.tid, name)
        for name in names:
            if name not in t.initiator_names:
                self.tgtadm.bind_name(t.tid, name)
        for addr in addresses:
            if addr not in t.initiator_addresses:
                self.tgtadm.bind_address(t.tid, addr)
        self._acls[t.tid] = wanted

    def sync_targets(self, wanted: dict[int, tuple[str, str | None] | None]) -> None:
        """Make the daemon's targets those of the catalog: tid -> (iqn, initiator)
        (initiator None: open to all); a target absent from ``wanted`` or mapped to
        None (its host is gone) is deleted, LUNs and sessions included."""
        for t in self.tgtadm.show():
            want = wanted.get(t.tid)
            if want is None or want[0] != t.iqn:
                self.drop_target(t.tid)
            else:
                self._set_acl(t, acl_for(want[1], want[1] is None))

    def drop_target(self, tid: int) -> None:
        """Delete target ``tid`` with its LUNs and ACL, logged-in sessions included."""
        try:
            self.tgtadm.target_delete(tid)
        except EndpointError:
            if any(t.tid == tid for t in self.tgtadm.show()):
                raise
        self._acls.pop(tid, None)

    def acls(self) -> dict[int, tuple[str, list[str], list[str]]]:
        """tid -> (target iqn, initiator names, initiator addresses) as tgtd has them."""
        return {
            t.tid: (t.iqn, t.initiator_names, t.initiator_addresses) for t in self.tgtadm.show()
        }

    def attach(self, a: Attachment) -> None:
        self._ensure_target(a)
        assert a.tid is not None
        try:
            self.tgtadm.lun_new(
                a.tid,
                int(a.secondary_id),
                a.path,
                readonly=a.readonly,
                serial=serial_for(a.vvol),
                scsi_id=a.vvol,
            )
        except EndpointError:
            if self._has(a):  # already there (a retry): fine
                return
            raise

    def _has(self, a: Attachment) -> bool:
        for t in self.tgtadm.show():
            if t.tid == a.tid:
                return any(str(lun.lun) == a.secondary_id and lun.path == a.path for lun in t.luns)
        return False

    def attach_many(self, atts: list[Attachment]) -> dict[str, VvhostError]:
        return attach_each(self, atts)

    def detach(self, key: str) -> None:
        tid, lun = (int(x) for x in key.split("/"))
        try:
            self.tgtadm.lun_delete(tid, lun)
        except EndpointError:
            if key in self.present():
                raise

    def present(self) -> set[str]:
        return {f"{t.tid}/{lun.lun}" for t in self.tgtadm.show() for lun in t.luns}

    def refresh(self, a: Attachment) -> None:
        assert a.tid is not None
        expected = tgt_megabytes(data_size(a.path))
        lun = self._shown(a, self.tgtadm.show())
        if lun is None:
            raise EndpointError(tool="tgtd", detail=f"target {a.tid} has no LUN {a.secondary_id}")
        if lun.size_mb == expected:
            return
        for _attempt in range(2):  # a second try if tgtd could not reopen the file
            self.tgtadm.lun_reopen(a.tid, int(a.secondary_id), a.path)
            lun = self._shown(a, self.tgtadm.show())
            if lun is not None and lun.path == a.path and lun.size_mb in (None, expected):
                return
        shows = "nothing" if lun is None else f"{lun.size_mb} MB from {lun.path or 'no file'}"
        raise EndpointError(
            tool="tgtd",
            detail=f"LUN {a.secondary_id} of target {a.tid} did not take the new size of "
            f"{a.path} ({expected} MB): it shows {shows}",
        )

    def stale(self, atts: list[Attachment]) -> list[str]:
        targets = self.tgtadm.show()
        out = []
        for a in atts:
            lun = self._shown(a, targets)
            if lun is None or lun.size_mb is None:
                continue  # missing: reconciliation adds it; no size shown: cannot tell
            with contextlib.suppress(OSError):
                if lun.size_mb != tgt_megabytes(data_size(a.path)):
                    out.append(a.key)
        return out

    @staticmethod
    def _shown(a: Attachment, targets: list[Target]) -> Lun | None:
        for t in targets:
            if t.tid == a.tid:
                return next((lun for lun in t.luns if str(lun.lun) == a.secondary_id), None)
        return None

    def handle(self, a: Attachment) -> dict[str, Any]:
        return {
            "uri": f"iscsi://{self.portal}/{a.target_iqn}/{a.secondary_id}",
            "portal": self.portal,
            "target": a.target_iqn,
            "lun": int(a.secondary_id),
            "initiator": a.initiator,
            "serial": serial_for(a.vvol),
        }
