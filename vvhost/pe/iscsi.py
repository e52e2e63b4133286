"""The ``iscsi`` endpoint: one ``tgtd`` per PE, driven with ``tgtadm``.

    tgtd -f -C <control port> --iscsi portal=<portal>
      target tid=1  iqn.<prefix>:<pe>.<host-a>   ACL: host-a's initiator name
                                                  CHAP: host-a's account (user, secret)
        LUN 1  -> ARRAY/vvols/<vvol>.raw   serial = vvol id (hex), SCSI id = vvol id
        LUN 2  -> /proc/<qsd>/root/RUNDIR/fuse/f<hash>.raw   (O_DIRECT)
                    = FUSE export of qemu-storage-daemon's rbd node POOL/NS/IMAGE[@SNAP]
        LUN 3  ...
      target tid=2  iqn.<prefix>:<pe>.<host-b>   ACL: host-b's initiator name
      target tid=N  iqn.<prefix>:<pe>.shared     ACL: ALL (bindings that ask for shared access)

A host reaches LUN L as ``iscsi://<portal>/<target iqn>/<L>``, logging in with
its initiator name and its CHAP account (catalog/chaprepo.py): a per-host
target admits an initiator only when both match.  Accounts are the daemon's;
each per-host target has exactly its host's account bound, and an account no
target uses is deleted (``sync_targets``, ``drop_target``).  While a target
switches accounts (rotation) it admits nobody (``_set_account``), so it never
admits anybody without CHAP in between.  A user name stands for one secret (a
new secret comes with a new name), so an account found in an adopted tgtd is
current.  The shared target asks for no CHAP (any host may use it).

A file source becomes a LUN over the file. An RBD source becomes a LUN over a
FUSE export of a qemu-storage-daemon that this endpoint runs beside its tgtd
(pe/fuseexport.py): QEMU's librbd driver opens any image, in any RADOS
namespace, with the source's user and keyring, which tgt-rbd cannot (tgt
1.0.85's bs_rbd has no namespace option, and every container of an RBD array
is a namespace). The daemon starts with the first RBD source; the endpoint is
alive only while both daemons are. When the daemon is replaced (it died and
the supervisor restarted the endpoint), every LUN over one of its files is
``stale`` and ``refresh`` reopens it over the new daemon's file.

LUN numbers are chosen here too (``allocate_lun``): per target, the lowest
free one, preferring the number a vvol had on that target before (its host's
domain XML still names it).

After a vvol grew, ``refresh`` has tgtd reopen the LUN's backing file in place
(same LUN number, serial and SCSI id; sessions stay logged in), after which
READ CAPACITY reports the new size: an initiator sees it when it asks again
(QEMU's iscsi driver does on ``block_resize``). For an RBD source the export's
node is resized first and the file waited for until it shows the new size.
It reopens only a LUN whose size or file changed: see :meth:`Tgtadm.lun_reopen`
for the one risk of a reopen.

Trust: every request goes to the tgtd this endpoint spawned (or adopted by its
exact command line), checked on each connection by the PID behind the control
socket; a control port held by any other tgtd is refused with
:class:`ForeignDaemon`.  The endpoint is alive only while that same tgtd
listens on the portal.  A target's ACL is rewritten from the attachment (the
current host row) whenever it differs, and ``sync_targets`` drops targets the
catalog no longer has, so a removed host's initiator keeps nothing.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ..arrays.sources import DataSource, FileSource
from ..errors import InUse, VvhostError
from ..tools import EndpointError
from ..tools.tgtadm import Backing, Lun, Target, Tgtadm, tgt_megabytes
from ..tools.tgtd_ipc import ForeignDaemon, holder
from .base import Attachment, attach_each
from .fuseexport import FuseExports, export_name
from .listen import portal_listens
from .proc import Daemon

DEFAULT_IQN_PREFIX = "iqn.2026-11.io.vvhost"
MAX_LUN = 1023  # per target, so one host can hold a large batch through one PE


def target_suffix(host: str) -> str:
    """The host's part of its target name.  iSCSI names are compared without case,
    so a host name with capitals gets a digest of its exact spelling: hosts "KVMY"
    and "kvmy" never share a target name."""
    low = host.lower()
    if low == host:
        return low
    return f"{low}-{hashlib.sha256(host.encode()).hexdigest()[:8]}"


def target_name(prefix: str, pe_name: str, host: str | None) -> str:
    """``PREFIX:<pe>.<host>``, or ``PREFIX:<pe>.shared`` for the shared target."""
    suffix = "shared" if host is None else target_suffix(host)
    return f"{prefix}:{pe_name.lower()}.{suffix}"


def allocate_lun(used: set[int], kept: set[int], hinted: int | None, owner: str) -> int:
    """The LUN for a new binding on a target: ``hinted`` (the number the vvol had
    there before) if it is free, else the lowest number neither ``used`` nor
    ``kept`` for another vvol, else the lowest unused one."""
    if hinted is not None and hinted not in used:
        return hinted
    taken = used | kept
    free = next((n for n in range(1, MAX_LUN + 1) if n not in taken), None)
    if free is None:  # every LUN is in use or kept for another vvol: take a kept one
        free = next((n for n in range(1, MAX_LUN + 1) if n not in used), None)
    if free is None:
        raise InUse(kind="iSCSI target", ref=owner, reason=f"all {MAX_LUN} LUNs are taken")
    return free


def serial_for(vvol_id: str) -> str:
    return vvol_id.replace("-", "")


# a target as the catalog wants it: (target iqn, initiator name or None for the
# shared target, the host's CHAP account (user, secret) or None)
WantedTarget = tuple[str, str | None, tuple[str, str] | None]


def _single(users: list[str]) -> str | None:
    return users[0] if len(users) == 1 else None


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
        self.fuse = FuseExports(name, rundir, peer_pid=lambda: self.daemon.pid)
        # tid -> (names, addresses, CHAP user) as last set
        self._acls: dict[int, tuple[list[str], list[str], str | None]] = {}

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
        self._acls = {
            t.tid: (t.initiator_names, t.initiator_addresses, _single(t.accounts))
            for t in self.tgtadm.show()
        }
        if self.fuse.wanted():  # RBD sources were served: adopt or replace their daemon
            self.fuse.start()

    def stop(self) -> None:
        self.daemon.stop(timeout=0)  # tgtd ignores SIGTERM
        self.fuse.stop()
        self._acls.clear()

    def alive(self) -> bool:
        if self.fuse.wanted() and not self.fuse.alive():
            return False
        return self.daemon.alive() and portal_listens(self.daemon.pid, self.portal)

    def _ensure_target(self, a: Attachment) -> None:
        assert a.tid is not None and a.target_iqn is not None
        wanted = acl_for(a.initiator, a.shared)
        chap = None if a.shared else a.chap
        if self._acls.get(a.tid) == (*wanted, chap[0] if chap else None):
            return
        shown = {t.tid: t for t in self.tgtadm.show()}
        if a.tid not in shown:
            self.tgtadm.target_new(a.tid, a.target_iqn)
            shown[a.tid] = Target(a.tid, a.target_iqn)
        elif shown[a.tid].iqn != a.target_iqn:  # another target took the number: replace it
            self.tgtadm.target_delete(a.tid)
            self.tgtadm.target_new(a.tid, a.target_iqn)
            shown[a.tid] = Target(a.tid, a.target_iqn)
        self._set_access(shown[a.tid], wanted, chap)
        self._prune_accounts()

    def _set_access(
        self, t: Target, wanted: tuple[list[str], list[str]], chap: tuple[str, str] | None
    ) -> None:
        """Target ``t``'s CHAP account first, then its ACL (see ``_set_acl``)."""
        self._set_account(t, chap)
        self._set_acl(t, wanted)
        self._acls[t.tid] = (*wanted, chap[0] if chap else None)

    def _set_account(self, t: Target, chap: tuple[str, str] | None) -> None:
        """Make ``chap`` the only incoming account of target ``t`` (None: none, which
        tgtd takes as "no CHAP"; only the shared target has none).

        tgt 1.0.85 crashes (SIGSEGV) when an account leaves a target that has two,
        so a target never gets a second one: to switch, its name ACL is emptied
        first (the target admits nobody, see ``_set_acl``, which restores it), the
        old account deleted (which unbinds it), then the new one bound."""
        user = chap[0] if chap else None
        stale = [u for u in t.accounts if u != user]
        if stale and t.initiator_names:
            for name in t.initiator_names:
                self.tgtadm.unbind_name(t.tid, name)
            t.initiator_names = []
        for old in stale:  # an account is one host's, bound to its one target here
            self.tgtadm.account_delete(old)
        t.accounts = [u for u in t.accounts if u == user]
        if chap is not None and chap[0] not in t.accounts:
            if chap[0] not in self.tgtadm.accounts():
                self.tgtadm.account_new(*chap)
            self.tgtadm.account_bind(t.tid, chap[0])
            t.accounts = [chap[0]]

    def _prune_accounts(self) -> None:
        """Delete the daemon's CHAP accounts that no target has bound."""
        used = {u for t in self.tgtadm.show() for u in t.accounts}
        for user in self.tgtadm.accounts():
            if user not in used:
                self.tgtadm.account_delete(user)

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

    def sync_targets(self, wanted: dict[int, WantedTarget | None]) -> None:
        """Make the daemon's targets those of the catalog: tid -> (iqn, initiator,
        CHAP account) (initiator None: the shared target, open to all); a target
        absent from ``wanted`` or mapped to None (its host is gone or fenced) is
        deleted, LUNs and sessions included, and so is every account no target
        keeps."""
        for t in self.tgtadm.show():
            want = wanted.get(t.tid)
            if want is None or want[0] != t.iqn:
                self.drop_target(t.tid, prune=False)
            else:
                shared = want[1] is None
                self._set_access(t, acl_for(want[1], shared), None if shared else want[2])
        self._prune_accounts()

    def drop_target(self, tid: int, prune: bool = True) -> None:
        """Delete target ``tid`` with its LUNs, ACL and (``prune``) its CHAP account,
        logged-in sessions included."""
        try:
            self.tgtadm.target_delete(tid)
        except EndpointError:
            if any(t.tid == tid for t in self.tgtadm.show()):
                raise
        self._acls.pop(tid, None)
        if prune:
            self._prune_accounts()

    def chap_users(self) -> dict[int, list[str]]:
        """tid -> the incoming CHAP users bound to it, as tgtd has them."""
        return {t.tid: t.accounts for t in self.tgtadm.show()}

    def acls(self) -> dict[int, tuple[str, list[str], list[str]]]:
        """tid -> (target iqn, initiator names, initiator addresses) as tgtd has them."""
        return {
            t.tid: (t.iqn, t.initiator_names, t.initiator_addresses) for t in self.tgtadm.show()
        }

    # -- what a LUN reads -----------------------------------------------------------------
    def backing(self, a: Attachment) -> Backing:
        """The backing store of ``a``'s LUN, made ready: an RBD source is exported
        (or grown to ``a.size``) by the endpoint's qemu-storage-daemon first."""
        src = a.source
        if isinstance(src, FileSource):
            return Backing(src.path)
        return Backing(self.fuse.provide(src, a.readonly, a.size), bsoflags="direct")

    def _current_path(self, a: Attachment) -> str | None:
        """The file ``a``'s LUN should have open now (None: no daemon serves it yet)."""
        src = a.source
        if isinstance(src, FileSource):
            return src.path
        return self.fuse.path(export_name(src, a.readonly))

    def holds(self, source: DataSource) -> bool:
        """Whether a LUN reads ``source`` now (an RBD image: through the endpoint's
        own qemu-storage-daemon, writable or not)."""
        if not self.alive():
            return False
        if isinstance(source, FileSource):
            paths = {source.path}
            return any(lun.path in paths for t in self.tgtadm.show() for lun in t.luns)
        names = {export_name(source, False), export_name(source, True)}
        shown = {self.fuse.name_in(lun.path) for t in self.tgtadm.show() for lun in t.luns}
        return bool(names & shown)

    def _release_unused(self) -> None:
        """Drop the FUSE exports no LUN reads any more."""
        if not self.fuse.wanted():
            return
        used = {self.fuse.name_in(lun.path) for t in self.tgtadm.show() for lun in t.luns}
        self.fuse.release({n for n in used if n is not None})

    def attach(self, a: Attachment) -> None:
        backing = self.backing(a)
        try:
            self._ensure_target(a)
            assert a.tid is not None
            self.tgtadm.lun_new(
                a.tid,
                int(a.secondary_id),
                backing,
                readonly=a.readonly,
                serial=serial_for(a.vvol),
                scsi_id=a.vvol,
            )
        except EndpointError:
            if self._has(a, backing):  # already there (a retry): fine
                return
            self._release_unused()
            raise

    def _has(self, a: Attachment, backing: Backing) -> bool:
        for t in self.tgtadm.show():
            if t.tid == a.tid:
                return any(
                    str(lun.lun) == a.secondary_id and lun.path == backing.path for lun in t.luns
                )
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
        self._release_unused()

    def present(self) -> set[str]:
        return {f"{t.tid}/{lun.lun}" for t in self.tgtadm.show() for lun in t.luns}

    def refresh(self, a: Attachment) -> None:
        assert a.tid is not None
        backing = self.backing(a)
        expected = tgt_megabytes(a.size)
        lun = self._shown(a, self.tgtadm.show())
        if lun is None:
            raise EndpointError(tool="tgtd", detail=f"target {a.tid} has no LUN {a.secondary_id}")
        if lun.size_mb == expected and lun.path == backing.path:
            return
        for _attempt in range(2):  # a second try if tgtd could not reopen the file
            self.tgtadm.lun_reopen(a.tid, int(a.secondary_id), backing)
            lun = self._shown(a, self.tgtadm.show())
            if lun is not None and lun.path == backing.path and lun.size_mb in (None, expected):
                return
        shows = "nothing" if lun is None else f"{lun.size_mb} MB from {lun.path or 'no file'}"
        raise EndpointError(
            tool="tgtd",
            detail=f"LUN {a.secondary_id} of target {a.tid} did not take the new size of "
            f"{backing.path} ({expected} MB): it shows {shows}",
        )

    def stale(self, atts: list[Attachment]) -> list[str]:
        targets = self.tgtadm.show()
        out = []
        for a in atts:
            lun = self._shown(a, targets)
            if lun is None:
                continue  # missing: reconciliation adds it
            moved = lun.path != self._current_path(a)  # a file of a daemon that is gone
            grew = lun.size_mb is not None and lun.size_mb != tgt_megabytes(a.size)
            if moved or grew:
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
            **({"chap_user": a.chap[0], "chap_secret": a.chap[1]} if a.chap else {}),
        }
