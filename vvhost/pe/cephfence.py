"""Cut a host off a Ceph cluster, including the librbd clients it has open.

Removing ``client.vvhost-<host>`` stops new sessions (they cannot
authenticate), but a client that is already connected keeps its tickets.
Every monitor is asked for its sessions; each one of the host's entity is
blocklisted by its address, so the OSDs refuse its I/O at once::

    auth rm client.vvhost-h1
    mon dump                          -> monitors a, b, ...
    sessions (to each monitor)        [{"entity_name": "client.vvhost-h1", "global_id": 4113,
                                        "addrs": {"addrvec": [{"type": "v1",
                                          "addr": "127.0.0.1:0", "nonce": 4100792875}]}}, ...]
    osd blocklist add 127.0.0.1:0/4100792875 (expire: a year)

Unlike the watcher names (arrays/rbdwatchers.py), a monitor that cannot be
asked fails the cut: a fence must not report success while it may have
missed a writer.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CephError
from .cephaccess import Cluster, entity

TIMEOUT = 10  # seconds per monitor
# Ceph lifts a blocklist entry after an hour by default; a fenced client must stay
# cut for as long as it may live (unfence never lifts it: the address dies with it)
EXPIRE = 365 * 86400.0


def cut(cluster: Cluster, host: str) -> list[str]:
    """Remove the host's identity and blocklist its live sessions; returns their
    addresses (``IP:PORT/NONCE``)."""
    name = entity(host)
    with cluster.admin() as ceph:
        ceph.auth_rm(name)
        addrs = sorted({a for mon in _monitors(ceph) for a in _addrs_of(ceph, mon, name, cluster)})
        for addr in addrs:
            ceph.blocklist_add(addr, expire=EXPIRE)
    return addrs


def _monitors(ceph: Any) -> list[str]:
    reply = ceph.command("mon dump") or {}
    return [str(m["name"]) for m in reply.get("mons", []) if m.get("name")]


def _addrs_of(ceph: Any, mon: str, name: str, cluster: Cluster) -> list[str]:
    cmd = json.dumps({"prefix": "sessions", "format": "json"})
    ret, out, err = ceph.rados.mon_command(cmd, b"", TIMEOUT, mon)
    if ret < 0:
        raise CephError(cluster=cluster.conf or "", detail=f"sessions of mon.{mon}: {err}")
    found = []
    for session in json.loads(out or b"[]"):
        if not isinstance(session, dict) or session.get("entity_name") != name:
            continue
        for a in (session.get("addrs") or {}).get("addrvec", []):
            if a.get("addr") and "nonce" in a:
                found.append(f"{a['addr']}/{a['nonce']}")
                break
    return found
