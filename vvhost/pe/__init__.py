"""Protocol endpoints: the daemons and directories through which hosts reach bound vvols.

One table maps each protocol to the function that opens its endpoint; adding a
protocol is its own module plus one line here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..model import Pe
from .base import Attachment, Endpoint

if TYPE_CHECKING:
    from .nbdtls import TlsShared


def _iscsi(pe: Pe, rundir: str, tls: TlsShared) -> Endpoint:
    from .iscsi import IscsiEndpoint

    assert pe.portal is not None
    return IscsiEndpoint(pe.name, pe.portal, int(pe.config["control_port"]), rundir)


def _nbd(pe: Pe, rundir: str, tls: TlsShared) -> Endpoint:
    if pe.portal:  # TCP: NBD over TLS, a daemon per host
        from .nbdtls import NbdTlsEndpoint

        return NbdTlsEndpoint(pe.id, pe.name, rundir, pe.portal, tls)
    from .nbd import NbdEndpoint

    return NbdEndpoint(pe.name, rundir, pe.portal)


def _file(pe: Pe, rundir: str, tls: TlsShared) -> Endpoint:
    from .filepe import FileEndpoint

    assert pe.path is not None
    return FileEndpoint(pe.name, pe.path, rundir)


def _rbd(pe: Pe, rundir: str, tls: TlsShared) -> Endpoint:
    from .rbd import RbdEndpoint

    return RbdEndpoint(pe.name, rundir)


OPENERS: dict[str, Callable[[Pe, str, TlsShared], Endpoint]] = {
    "iscsi": _iscsi,
    "nbd": _nbd,
    "file": _file,
    "rbd": _rbd,
}
PROTOCOLS = tuple(OPENERS)


def secondary_id(protocol: str, vvol_id: str, host: str) -> str:
    """The secondary id of a new binding on a protocol without LUNs: the export
    name (nbd) or the entry name (file, rbd); iSCSI LUNs come from ``iscsi.allocate_lun``."""
    if protocol == "nbd":
        return f"vv-{vvol_id}.{host}"
    return f"{vvol_id}.{host}"


def open_endpoint(pe: Pe, state_dir: str, tls: TlsShared) -> Endpoint:
    """The runtime object for a PE; its daemon's files live in STATE/pe/<name>/
    (a TCP NBD endpoint uses the control plane's CA and port book, ``tls``)."""
    rundir = os.path.join(state_dir, "pe", pe.name)
    return OPENERS[pe.protocol](pe, rundir, tls)


__all__ = ["PROTOCOLS", "Attachment", "Endpoint", "open_endpoint", "secondary_id"]
