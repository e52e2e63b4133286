"""Secrets that domain disks refer to, defined on this host's libvirtd.

    handle class ──secrets()──> LibvirtSecret (uuid, xml(), value())
                                    │ define: look up by UUID, define the XML if missing,
                                    │         set the value (always: cheap and idempotent)
                                    ▼
                              libvirtd  <secret>  ── <auth><secret uuid=.../></auth> in a disk

Only the ``vvhost vm`` commands call this: a libvirt hook must never call libvirt.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import libvirt

from ..errors import VvhostError


class SecretError(VvhostError):
    code = "libvirt-secret"
    status = 502
    exit_code = 6
    template = "libvirt secret {uuid}: {detail}"


class LibvirtSecret(Protocol):
    """A secret a domain's disk refers to by UUID."""

    @property
    def uuid(self) -> str: ...

    def xml(self) -> str: ...

    def value(self) -> bytes: ...


def define(conn: libvirt.virConnect, secret: LibvirtSecret) -> None:
    """Make libvirtd hold ``secret`` (defined if missing, value set)."""
    try:
        try:
            found = conn.secretLookupByUUIDString(secret.uuid)
        except libvirt.libvirtError:
            found = conn.secretDefineXML(secret.xml(), 0)
        found.setValue(secret.value(), 0)
    except libvirt.libvirtError as exc:
        raise SecretError(uuid=secret.uuid, detail=str(exc.get_error_message())) from None


def define_all(conn: libvirt.virConnect, secrets: Iterable[LibvirtSecret]) -> None:
    """``define`` each secret once."""
    for secret in {s.uuid: s for s in secrets}.values():
        define(conn, secret)


def remove(conn: libvirt.virConnect, uuid: str) -> bool:
    """Drop the secret ``uuid`` from libvirtd; False if there was none."""
    try:
        found = conn.secretLookupByUUIDString(uuid)
    except libvirt.libvirtError:
        return False
    try:
        found.undefine()
    except libvirt.libvirtError as exc:
        raise SecretError(uuid=uuid, detail=str(exc.get_error_message())) from None
    return True
