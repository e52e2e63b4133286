"""tgtd's management protocol, spoken directly on its control socket.

This is what ``tgtadm`` does, without a process per call (tgt 1.0.x ABI)::

    /var/run/tgtd/socket.N  (unix stream; one request per connection)

    request   struct tgtadm_req, 120 bytes, little endian, then the parameters
      0  u32 mode     0 system, 1 target, 2 logicalunit, ...
      4  u32 op       0 new, 1 delete, 2 show, 3 bind, 4 unbind, 5 update
      8  char[64] lld "iscsi"
     72  u32 len      120 + length of the parameter string (with its NUL)
     76  i32 tid      -1 when none
     80  u64 sid
     88  u64 lun      ~0 when none
     96  u32 cid, host_no, device_type, ac_dir, pack, force
    120  "key=value,key=value\\0"     (updates are sent as "targetOps k=v,...,")

    reply     u32 err (0 = success), u32 len (8 + length of the text that follows)

Who answers: a control socket is a path that any tgtd may hold (another
vvhost, the distribution's tgtd).  With ``owner`` set, every connection first
asks the kernel which process listens on it (SO_PEERCRED) and refuses to send
anything unless it is that PID: vvhost only ever drives a daemon it started.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from . import EndpointError

REQUEST = struct.Struct("<II64sIiQQIIIIII")
REPLY = struct.Struct("<II")
NO_LUN = (1 << 64) - 1

MODE_SYSTEM, MODE_TARGET, MODE_DEVICE = 0, 1, 2
MODE_ACCOUNT = 7  # CHAP accounts: user=U,password=P (new), user=U (delete, bind, unbind)
OP_NEW, OP_DELETE, OP_SHOW, OP_BIND, OP_UNBIND, OP_UPDATE = 0, 1, 2, 3, 4, 5

# tgt's ``enum tgtadm_errno`` (usr/tgtadm_error.h, unchanged since 1.0.30), in order.
ERRORS = [
    "success",
    "unknown error",
    "out of memory",
    "can't find the driver",
    "can't find the target",
    "can't find the logical unit",
    "can't find the session",
    "can't find the connection",
    "can't find the binding",
    "this target already exists",
    "this logical unit number already exists",
    "this binding already exists",
    "this access control rule already exists",
    "this access control rule does not exist",
    "this account already exists",
    "can't find the account",
    "too many accounts",
    "invalid request",
    "this target already has an outgoing account",
    "this target is still active",
    "this logical unit is still active",
    "this driver is busy",
    "this operation is not supported",
    "unknown parameter",
    "this device has Prevent Removal set",
]
ERR_NO_TARGET, ERR_NO_LUN, ERR_TARGET_EXIST, ERR_LUN_EXIST = 4, 5, 9, 10
ERR_ACL_EXIST, ERR_ACL_NOEXIST = 12, 13


PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ForeignDaemon(EndpointError):
    """The control socket is answered by a tgtd that vvhost did not start."""

    template = (
        "tgtd control port {port} is held by another process (pid {pid}), not by the tgtd "
        "vvhost started{ours}: nothing was sent to it"
    )


def control_path(control_port: int) -> str:
    return f"/var/run/tgtd/socket.{control_port}"


def peer_pid(sock: socket.socket) -> int:
    """The PID of the process that listens on the other end of a connected unix socket."""
    pid, _uid, _gid = PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
    )
    return int(pid)


def holder(control_port: int, timeout: float = 2.0) -> int | None:
    """The PID of whatever tgtd answers on ``control_port`` now (None: nobody)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(control_path(control_port))
            return peer_pid(sock)
    except OSError:
        return None


class TgtdControl:
    def __init__(
        self,
        control_port: int,
        timeout: float = 10.0,
        owner: Callable[[], int | None] | None = None,
    ) -> None:
        self.control_port = control_port
        self.path = control_path(control_port)
        self.timeout = timeout
        self.owner = owner  # the PID that must answer (None: anybody may)

    def request(
        self,
        mode: int,
        op: int,
        *,
        tid: int = -1,
        lun: int | None = None,
        params: str = "",
        force: bool = False,
    ) -> str:
        body = params.encode() + b"\0" if params else b""
        header = REQUEST.pack(
            mode,
            op,
            b"iscsi",
            REQUEST.size + len(body),
            tid,
            0,
            NO_LUN if lun is None else lun,
            0,
            0,
            0,
            0,
            0,
            int(force),
        )
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                self._check_peer(sock)
                sock.sendall(header + body)
                err, length = REPLY.unpack(_recv(sock, REPLY.size))
                text = _recv(sock, length - REPLY.size) if length > REPLY.size else b""
        except OSError as exc:
            raise EndpointError(tool="tgtd", detail=f"{self.path}: {exc.strerror or exc}") from exc
        if err:
            reason = ERRORS[err] if err < len(ERRORS) else f"error {err}"
            raise EndpointError(tool="tgtd", detail=reason, errno=err)
        return text.rstrip(b"\0").decode(errors="replace")

    def _check_peer(self, sock: socket.socket) -> None:
        if self.owner is None:
            return
        expected, pid = self.owner(), peer_pid(sock)
        if pid != expected:
            ours = f" (pid {expected})" if expected else ""
            raise ForeignDaemon(port=self.control_port, pid=pid, ours=ours)


def _recv(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionResetError("tgtd closed the control connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
