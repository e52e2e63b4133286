"""Bring a VM of a fenced host up on this host, from its config vvol alone.

1  read the VM's config document (domain XML with the vvhost metadata)
2  ask the control plane whether this host may run it: none of its vvols is
   bound for another host that is not fenced (refused otherwise: the VM may
   still run there)
3  define it here (``register``) unless this libvirt already knows it
4  start it: the hook binds its vvols for this host as for any start
"""

from __future__ import annotations

from typing import Any

from ..errors import InUse, InvalidInput, NotFound
from . import domainxml as dx
from .vms import VmManager


def recover(vms: VmManager, config_vvol: str) -> dict[str, Any]:
    doc = vms.client.config_get(config_vvol)
    meta = dx.meta(dx.parse(str(doc["xml"])))
    if meta is None:
        raise InvalidInput(detail=f"config vvol {config_vvol} holds no vvhost VM")
    check = vms.client.recover_check(vms.conf.name, [config_vvol, *meta.all_vvols()])
    name = str(doc["name"])
    try:
        dom = vms.domain(name)
    except NotFound:
        vms.register(config_vvol)
    else:
        if dom.isActive():
            raise InUse(kind="VM", ref=name, reason=f"it already runs on {vms.conf.name}")
    out = vms.start(name)
    return {**out, "recovered_from": check["fenced_hosts"]}
