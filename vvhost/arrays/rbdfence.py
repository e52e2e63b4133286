"""Cut other librados clients off an RBD array's cluster: the OSD blocklist.

    blocklist(cluster, ["127.0.0.1:0/3271", ...])
      for each address, through this process's own connection (``cluster``):
        mon command {"prefix": "osd blocklist", "blocklistop": "add",
                     "addr": "127.0.0.1:0/3271", "expire": EXPIRE}
      the monitors publish a new OSD map; from then on every OSD answers that
      client's requests with EBLOCKLISTED, and its watches on images go

An address names one librados instance (IP:PORT/NONCE): a process that connects
again gets a new nonce, so the entry cuts exactly the old client.  This
process's own client is never blocklisted (it would cut itself off).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..tools.ceph import blocklist_add_args
from .rbdconn import Cluster

log = logging.getLogger(__name__)

# A frozen process may wake at any time and send what it had queued.  Its first
# refused request makes it drop that client, but a request it sends only after
# the entry expired would land: the entry lasts far longer than any pause a
# replica could come back from (GC, SIGSTOP, a partition): a week.
EXPIRE = 7 * 86400.0


def blocklist_command(addr: str, expire: float = EXPIRE) -> dict[str, Any]:
    """The monitor command that blocklists the client at ``addr`` for ``expire`` s."""
    if expire <= 0:
        raise ValueError(f"a blocklist entry must expire after a positive time, not {expire}")
    return {"prefix": "osd blocklist", **blocklist_add_args(addr, expire)}


def blocklist(cluster: Cluster, addrs: Sequence[str], expire: float = EXPIRE) -> None:
    """Blocklist every client in ``addrs`` (raises ``ArrayOffline`` or
    ``BackendError`` at the first one the cluster does not take)."""
    for addr in addrs:
        cmd = blocklist_command(addr, expire)
        if cmd["addr"] == cluster.address():
            log.warning("array %s: not blocklisting %s: it is this process", cluster.array, addr)
            continue
        cluster.command(cmd)
