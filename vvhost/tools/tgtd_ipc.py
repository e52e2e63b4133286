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
"""

from __future__ import annotations

import socket
import struct

from . import EndpointError

REQUEST = struct.Struct("<II64sIiQQIIIIII")
REPLY = struct.Struct("<II")
NO_LUN = (1 << 64) - 1

MODE_SYSTEM, MODE_TARGET, MODE_DEVICE = 0, 1, 2
OP_NEW, OP_DELETE, OP_SHOW, OP_BIND, OP_UNBIND, OP_UPDATE = 0, 1, 2, 3, 4, 5

ERRORS = [
    "success",
    "unknown error",
    "out of memory",
    "can't find the driver",
    "can't find the target",
    "can't find the logical unit",
    "can't find the session",
    "can't find the connection",
    "the target already exists",
    "the logical unit already exists",
    "this access control rule already exists",
    "this access control rule does not exist",
    "this account already exists",
    "can't find the account",
    "too many accounts",
    "invalid request",
    "this target already has an outgoing account",
    "this target is still active",
    "this logical unit is still active",
    "this operation is not supported",
    "unknown parameter",
]


class TgtdControl:
    def __init__(self, control_port: int, timeout: float = 10.0) -> None:
        self.path = f"/var/run/tgtd/socket.{control_port}"
        self.timeout = timeout

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
                sock.sendall(header + body)
                err, length = REPLY.unpack(_recv(sock, REPLY.size))
                text = _recv(sock, length - REPLY.size) if length > REPLY.size else b""
        except OSError as exc:
            raise EndpointError(tool="tgtd", detail=f"{self.path}: {exc.strerror or exc}") from exc
        if err:
            reason = ERRORS[err] if err < len(ERRORS) else f"error {err}"
            raise EndpointError(tool="tgtd", detail=reason, errno=err)
        return text.rstrip(b"\0").decode(errors="replace")


def _recv(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionResetError("tgtd closed the control connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
