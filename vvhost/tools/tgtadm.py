"""Drive one tgtd instance (``tgtd -C N``, control socket /run/tgtd/socket.N) the way
``tgtadm -C N`` does, but over the socket directly.  What a target ``show`` returns
(the text ``tgtadm --op show`` prints), and what :meth:`Tgtadm.show` reads from it
(4-space indentation levels)::

    Target 1: iqn.2024-01.org.example:vm1           -> Target.tid, Target.iqn
        System information: / I_T nexus information:   (skipped)
        LUN information:
            LUN: 0                                  controller, left out of Target.luns
            ...
            LUN: 1                                  -> Lun.lun
                SCSI ID: vvol-7f3a                  -> Lun.scsi_id  (T10 vendor id designator)
                SCSI SN: 0123...cdef                -> Lun.serial   (VPD 0x80 unit serial)
                Size: 68 MB, Block size: 512        -> Lun.size_mb  (see tgt_megabytes)
                Readonly: Yes                       -> Lun.readonly
                Backing store path: /srv/a.img      -> Lun.path     ("None" -> None)
        Account information:
            host-a.1f2e3d4c                         -> Target.accounts (incoming CHAP users)
        ACL information:
            192.168.0.0/24                          address ACLs come first,
            ALL                                     ("ALL", an address or a network)
            iqn.2008-11.org.linux-kvm               then initiator-name ACLs

tgtd lists both kinds of ACL in one block with nothing to tell them apart, so an
entry that is ``ALL`` or parses as an IP address/network is an address, any other
one a name (iSCSI names start with ``iqn.``, ``eui.`` or ``naa.``).

A LUN's backing store is a file (tgtd's default ``rdwr``), opened with O_DIRECT
when ``bsoflags=direct`` (a FUSE file whose page cache could hide other writers:
see pe/fuseexport.py). Other backing stores (``bstype``, ``bsopts``) are not used
by vvhost: Debian's tgt-rbd cannot open images in a RADOS namespace.

A LUN's size is read from its backing file when the file is opened; tgtd has no
request that re-reads it, but it reopens the file when the LU's ``path`` is set
again, which it allows only while the LU is offline: see :meth:`Tgtadm.lun_reopen`.

CHAP (checked with tgt 1.0.85): accounts are the daemon's (``--mode account``,
listed by :meth:`Tgtadm.accounts`); a target with an incoming account bound
admits only initiators that pass CHAP as one of its accounts, *and* its ACL
still applies. A target with no account asks for no CHAP. Deleting an account
unbinds it from every target; an account *unbind* request makes tgtd 1.0.85
crash (SIGSEGV), so there is no method for it. Passwords go over the control socket only.

ACL semantics (checked with tgt 1.0.85): a target without any ACL admits nobody;
an initiator is admitted when its address matches ANY address ACL **or** its name
matches ANY name ACL. So a name-only target must have no address ACL at all:
``bind_address(tid, "ALL")`` opens it to every initiator whatever the name ACLs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from . import EndpointError
from .tgtd_ipc import (
    MODE_ACCOUNT,
    MODE_DEVICE,
    MODE_SYSTEM,
    MODE_TARGET,
    OP_BIND,
    OP_DELETE,
    OP_NEW,
    OP_SHOW,
    OP_UNBIND,
    OP_UPDATE,
    TgtdControl,
)

VENDOR_ID = "VVHOST"
PRODUCT_ID = "vvol"
SCSI_SN_MAX = 36  # tgt's SCSI_SN_LEN
SCSI_ID_MAX = 36  # tgt's SCSI_ID_LEN

_PARAM_VALUE = re.compile(r"[A-Za-z0-9._:\-]+")


@dataclass(frozen=True)
class Backing:
    """What a LUN reads and writes: ``path`` for tgtd's ``--backing-store``, with
    ``bstype`` and ``bsopts`` for a backing store other than plain files."""

    path: str
    bstype: str | None = None
    bsopts: str | None = None
    bsoflags: str | None = None  # "direct": tgtd opens the file with O_DIRECT

    def params(self) -> str:
        """``path=...[,bstype=...][,bsopts=...][,bsoflags=...]`` (tgtd splits on commas)."""
        for what, value in (("backing path", self.path), ("backing options", self.bsopts)):
            if value is not None and ("," in value or "\0" in value):
                raise ValueError(f"{what} {value!r} has a comma")
        out = f"path={self.path}"
        if self.bstype:
            out += f",bstype={self.bstype}"
        if self.bsopts:
            out += f",bsopts={self.bsopts}"
        if self.bsoflags:
            out += f",bsoflags={self.bsoflags}"
        return out


@dataclass
class Lun:
    lun: int
    path: str | None
    readonly: bool
    serial: str
    scsi_id: str
    size_mb: int | None = None  # as ``show`` prints it; None when it printed no "N MB"


@dataclass
class Target:
    tid: int
    iqn: str
    luns: list[Lun] = field(default_factory=list)
    initiator_names: list[str] = field(default_factory=list)
    initiator_addresses: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)  # incoming CHAP users bound


def _check_value(what: str, value: str, limit: int) -> str:
    """tgtadm's ``--params`` is ``k=v,k=v``: values may hold no ``,``/``=``/blanks."""
    if not _PARAM_VALUE.fullmatch(value) or len(value) > limit:
        raise ValueError(f"{what} {value!r}: 1-{limit} characters of [A-Za-z0-9._:-]")
    return value


def tgt_megabytes(size: int) -> int:
    """The "Size: N MB" that ``show`` prints for a LUN of ``size`` bytes.

    tgtd does not print size // 10**6 but an integer approximation of it, over
    512-byte sectors: (s - (s // 625 - 974)) // 1950 in unsigned 64-bit arithmetic,
    which equals (s - s // 625 + 974) // 1950. Growing by 1 MiB (2048 sectors) adds
    more than one to it, so every extend changes what ``show`` prints.
    """
    sectors = size // 512
    return (sectors - sectors // 625 + 974) // 1950


def _parse_megabytes(value: str) -> int | None:
    m = re.fullmatch(r"(\d+) MB, Block size: \d+", value.strip())
    return int(m.group(1)) if m else None


def _is_address(entry: str) -> bool:
    if entry == "ALL":
        return True
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


class Tgtadm:
    """One tgtd instance, addressed by its control port N (``tgtd -C N``), managed over
    its control socket (:mod:`vvhost.tools.tgtd_ipc`): the same requests ``tgtadm``
    sends, without a process per call."""

    def __init__(
        self,
        control_port: int,
        timeout: float = 10.0,
        owner: Callable[[], int | None] | None = None,
    ) -> None:
        self.control_port = control_port
        self.ipc = TgtdControl(control_port, timeout, owner)

    # --- targets -------------------------------------------------------------

    def target_new(self, tid: int, iqn: str) -> None:
        self.ipc.request(MODE_TARGET, OP_NEW, tid=tid, params=f"targetname={iqn}")

    def target_delete(self, tid: int) -> None:
        """Delete the target even with sessions logged in (``--force``)."""
        self.ipc.request(MODE_TARGET, OP_DELETE, tid=tid, force=True)

    def bind_name(self, tid: int, initiator_name: str) -> None:
        self.ipc.request(MODE_TARGET, OP_BIND, tid=tid, params=f"initiator-name={initiator_name}")

    def unbind_name(self, tid: int, name: str) -> None:
        self.ipc.request(MODE_TARGET, OP_UNBIND, tid=tid, params=f"initiator-name={name}")

    def bind_address(self, tid: int, address: str = "ALL") -> None:
        """Admit initiators by address; see the module docstring: this ORs with name ACLs."""
        self.ipc.request(MODE_TARGET, OP_BIND, tid=tid, params=f"initiator-address={address}")

    def unbind_address(self, tid: int, address: str) -> None:
        self.ipc.request(MODE_TARGET, OP_UNBIND, tid=tid, params=f"initiator-address={address}")

    # --- CHAP accounts -------------------------------------------------------

    def account_new(self, user: str, password: str) -> None:
        _check_value("CHAP user", user, 255)
        _check_value("CHAP secret", password, 255)
        self.ipc.request(MODE_ACCOUNT, OP_NEW, params=f"user={user},password={password}")

    def account_delete(self, user: str) -> None:
        """Delete the account (tgtd unbinds it from every target first)."""
        self.ipc.request(MODE_ACCOUNT, OP_DELETE, params=f"user={user}")

    def account_bind(self, tid: int, user: str) -> None:
        """Target ``tid`` asks initiators for CHAP as ``user`` (incoming)."""
        self.ipc.request(MODE_ACCOUNT, OP_BIND, tid=tid, params=f"user={user}")

    def accounts(self) -> list[str]:
        """The daemon's CHAP users (``--mode account --op show``)."""
        text = self.ipc.request(MODE_ACCOUNT, OP_SHOW)
        return [line.strip() for line in text.splitlines()[1:] if line.strip()]

    # --- logical units -------------------------------------------------------

    def lun_new(
        self,
        tid: int,
        lun: int,
        path: str | Backing,
        *,
        readonly: bool = False,
        serial: str | None = None,
        scsi_id: str | None = None,
    ) -> None:
        """Add LUN ``lun`` backed by ``path`` (a file, or a ``Backing``), then set
        its inquiry data.

        Vendor/product are always VVHOST/vvol; ``serial`` becomes the unit serial
        number (VPD page 0x80), ``scsi_id`` the T10 vendor id designator (VPD 0x83).
        If setting them fails the half-made LUN is deleted before the error is raised.
        """
        if lun < 1:
            raise ValueError("LUN 0 is the target's controller")
        backing = path if isinstance(path, Backing) else Backing(path)
        device = backing.params()
        params = [f"vendor_id={VENDOR_ID}", f"product_id={PRODUCT_ID}"]
        if serial is not None:
            params.append(f"scsi_sn={_check_value('serial', serial, SCSI_SN_MAX)}")
        if scsi_id is not None:
            params.append(f"scsi_id={_check_value('scsi_id', scsi_id, SCSI_ID_MAX)}")
        if readonly:
            params.append("readonly=1")
        else:  # initiators see holes (GET LBA STATUS) and may punch them (UNMAP, WRITE SAME)
            params.append("thin_provisioning=1")
        self.ipc.request(MODE_DEVICE, OP_NEW, tid=tid, lun=lun, params=device)
        try:
            self.ipc.request(
                MODE_DEVICE,
                OP_UPDATE,
                tid=tid,
                lun=lun,
                params="targetOps " + ",".join(params) + ",",
            )
        except BaseException:
            with contextlib.suppress(EndpointError):  # report the first error
                self.lun_delete(tid, lun)
            raise

    def lun_reopen(self, tid: int, lun: int, path: str | Backing) -> None:
        """Have tgtd close and reopen LUN ``lun``'s backing file ``path``, so that it
        reads the file's size again (READ CAPACITY then answers the new size).

        The LUN keeps its number, serial, SCSI id and the initiators' sessions.
        tgtd sets a path only on an offline LU, so the request is
        ``online=0,path=PATH,online=1``, applied in one go by tgtd's control loop.
        tgtd answers with the status of the last step only: check the outcome
        with :meth:`show`. A command that one of tgtd's I/O threads starts in the
        microseconds between the close and the reopen fails (bad file descriptor,
        reported as MEDIUM ERROR): 6 commands in 19,773 reopens under saturating
        16 MiB reads and writes (tgt 1.0.85). Deleting and re-adding the LUN is far
        worse (commands in the gap reach no LUN), so reopen only when the size changed.
        """
        backing = path if isinstance(path, Backing) else Backing(path)
        if "," in backing.path:
            raise ValueError(f"backing path {backing.path!r} has a comma")
        self.ipc.request(
            MODE_DEVICE,
            OP_UPDATE,
            tid=tid,
            lun=lun,
            params=f"online=0,path={backing.path},online=1",
        )

    def lun_delete(self, tid: int, lun: int) -> None:
        self.ipc.request(MODE_DEVICE, OP_DELETE, tid=tid, lun=lun)

    # --- state ---------------------------------------------------------------

    def show(self) -> list[Target]:
        return parse_show(self.ipc.request(MODE_TARGET, OP_SHOW))

    def ping(self) -> bool:
        """True when tgtd answers on its control socket."""
        try:
            self.ipc.request(MODE_SYSTEM, OP_SHOW)
        except EndpointError:
            return False
        return True


def parse_show(text: str) -> list[Target]:
    """Parse ``tgtadm --mode target --op show`` (layout in the module docstring)."""
    targets: list[Target] = []
    target: Target | None = None
    section = ""
    lun: Lun | None = None
    acl: list[str] = []

    def finish() -> None:
        if target is None:
            return
        target.initiator_addresses = [a for a in acl if _is_address(a)]
        target.initiator_names = [a for a in acl if not _is_address(a)]

    for raw in text.splitlines():
        line = raw.rstrip("\n")
        body = line.lstrip(" ")
        depth = (len(line) - len(body)) // 4
        if not body:
            continue
        if depth == 0:
            m = re.fullmatch(r"Target (\d+): (.*)", body)
            if m is None:
                continue
            finish()
            target, section, lun, acl = Target(int(m.group(1)), m.group(2)), "", None, []
            targets.append(target)
        elif target is None:
            continue
        elif depth == 1:
            section, lun = body.rstrip(":"), None
        elif section == "ACL information" and depth == 2:
            acl.append(body.strip())
        elif section == "Account information" and depth == 2:
            if not body.endswith(" (outgoing)"):
                target.accounts.append(body.strip())
        elif section == "LUN information" and depth == 2:
            m = re.fullmatch(r"LUN: (\d+)", body.strip())
            lun = None
            if m and int(m.group(1)) != 0:
                lun = Lun(int(m.group(1)), None, False, "", "")
                target.luns.append(lun)
        elif section == "LUN information" and depth >= 3 and lun is not None:
            key, _, value = body.partition(": ")
            if key == "SCSI ID":
                lun.scsi_id = value
            elif key == "SCSI SN":
                lun.serial = value
            elif key == "Size":
                lun.size_mb = _parse_megabytes(value)
            elif key == "Readonly":
                lun.readonly = value.strip() == "Yes"
            elif key == "Backing store path":
                lun.path = None if value in ("", "None") else value
    finish()
    return targets
