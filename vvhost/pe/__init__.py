"""Protocol endpoints: the daemons and directories through which hosts reach bound vvols."""

from __future__ import annotations

import os

from ..model import Pe
from .base import Attachment, Endpoint


def open_endpoint(pe: Pe, state_dir: str) -> Endpoint:
    """The runtime object for a PE; its daemon's files live in STATE/pe/<name>/."""
    rundir = os.path.join(state_dir, "pe", pe.name)
    if pe.protocol == "iscsi":
        from .iscsi import IscsiEndpoint

        assert pe.portal is not None
        return IscsiEndpoint(pe.name, pe.portal, int(pe.config["control_port"]), rundir)
    if pe.protocol == "nbd" and pe.portal:
        from ..certs import NbdCa
        from .nbdtls import NbdTlsEndpoint

        return NbdTlsEndpoint(pe.name, rundir, pe.portal, NbdCa(state_dir))
    if pe.protocol == "nbd":
        from .nbd import NbdEndpoint

        return NbdEndpoint(pe.name, rundir, pe.portal)
    from .filepe import FileEndpoint

    assert pe.path is not None
    return FileEndpoint(pe.name, pe.path, rundir)


__all__ = ["Attachment", "Endpoint", "open_endpoint"]
