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
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..errors import VvhostError
from ..tools import EndpointError
from ..tools.tgtadm import Lun, Target, Tgtadm, tgt_megabytes
from .base import Attachment, attach_each, data_size
from .proc import Daemon

DEFAULT_IQN_PREFIX = "iqn.2026-11.io.vvhost"


def serial_for(vvol_id: str) -> str:
    return vvol_id.replace("-", "")


class IscsiEndpoint:
    protocol = "iscsi"

    def __init__(self, name: str, portal: str, control_port: int, rundir: str) -> None:
        self.name = name
        self.portal = portal
        self.tgtadm = Tgtadm(control_port)
        self.daemon = Daemon(
            f"tgtd-{name}",
            ["tgtd", "-f", "-C", str(control_port), "--iscsi", f"portal={portal}"],
            rundir,
            ready=self.tgtadm.ping,
        )
        self._targets: set[int] = set()

    def start(self) -> None:
        os.makedirs(self.daemon.rundir, exist_ok=True)
        self.daemon.start()
        self._targets = {t.tid for t in self.tgtadm.show()}

    def stop(self) -> None:
        self.daemon.stop(timeout=0)  # tgtd ignores SIGTERM
        self._targets.clear()

    def alive(self) -> bool:
        return self.daemon.alive()

    def _ensure_target(self, a: Attachment) -> None:
        assert a.tid is not None and a.target_iqn is not None
        if a.tid in self._targets:
            return
        existing = {t.tid for t in self.tgtadm.show()}
        if a.tid not in existing:
            self.tgtadm.target_new(a.tid, a.target_iqn)
            if a.initiator:
                self.tgtadm.bind_name(a.tid, a.initiator)
            else:
                self.tgtadm.bind_address(a.tid, "ALL")
        self._targets.add(a.tid)

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
