"""Does *this* process listen on a TCP portal?  (An endpoint is alive only then.)

A daemon may run and answer on its control socket while its portal belongs to
someone else (tgtd keeps running when it cannot bind its portal).  Connecting to
the port would not tell them apart, so the answer comes from the kernel:

    /proc/PID/net/tcp, tcp6    sl  local_address  rem_address  st ... inode
                                0: 0100007F:0CBC  00000000:0000 0A ... 48213
                                   127.0.0.1:3260               LISTEN
    /proc/PID/fd/*             -> "socket:[48213]"   the socket is PID's own

The portal listens for PID when a LISTEN entry on its port, bound to one of the
portal's addresses or to the wildcard, has an inode among PID's open sockets.
"""

from __future__ import annotations

import ipaddress
import os
import socket

LISTEN = "0A"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addresses(host: str) -> set[Address]:
    host = host.strip("[]")
    try:
        return {ipaddress.ip_address(host)}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}


def _decode(hexaddr: str) -> tuple[Address, int]:
    addr, port = hexaddr.split(":")
    raw = bytes.fromhex(addr)
    # the kernel prints each 32-bit word in host (little endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words), int(port, 16)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return set()
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening_inodes(pid: int, port: int) -> dict[str, Address]:
    """inode -> bound address of the TCP sockets listening on ``port`` in PID's network."""
    found = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            addr, lport = _decode(fields[1])
            if lport == port:
                found[fields[9]] = addr
    return found


def portal_listens(pid: int | None, portal: str) -> bool:
    """True when process ``pid`` itself listens on ``portal`` ("HOST:PORT")."""
    if pid is None:
        return False
    host, _, port = portal.rpartition(":")
    wanted = _addresses(host)
    mine = _socket_inodes(pid)
    for inode, addr in listening_inodes(pid, int(port)).items():
        if inode in mine and (addr.is_unspecified or addr in wanted):
            return True
    return False
