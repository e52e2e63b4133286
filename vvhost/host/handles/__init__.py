"""Binding handles on the host side: one class per endpoint protocol, one table.

    PROTOCOLS   "file" -> FileHandle    handles/file.py
                "iscsi" -> IscsiHandle  handles/iscsi.py
                "nbd" -> NbdHandle      handles/nbd.py
                "rbd" -> RbdHandle      handles/rbd.py

``of(handle)`` wraps a handle dict from the control plane in its class;
``read_source`` reads a ``<disk>``/``<backingStore>``'s source back into the
same key shape ``Handle.key()`` gives. Adding a protocol is its module plus one
line here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from ...errors import InvalidInput
from .base import Handle, HostAccess, ImageObject, LibvirtSecret, normal
from .file import FileHandle
from .iscsi import IscsiHandle
from .nbd import NbdHandle
from .rbd import RbdHandle

PROTOCOLS: dict[str, type[Handle]] = {
    cls.protocol: cls for cls in (FileHandle, IscsiHandle, NbdHandle, RbdHandle)
}
_BY_DISK_TYPE = {cls.disk_type: cls for cls in PROTOCOLS.values() if cls.disk_type != "network"}

__all__ = ["PROTOCOLS", "Handle", "HostAccess", "ImageObject", "LibvirtSecret", "of", "normal"]


def of(handle: dict[str, Any]) -> Handle:
    """The class of ``handle``'s protocol around it."""
    proto = handle.get("protocol")
    cls = PROTOCOLS.get(str(proto))
    if cls is None:
        raise InvalidInput(detail=f"binding {handle.get('uri')} has an unknown protocol {proto!r}")
    return cls(handle)


def read_source(holder: ET.Element) -> dict[str, str]:
    """The key of the source a ``<disk>``, ``<backingStore>`` or ``<mirror>`` opens
    (empty without a source; protocols vvhost does not speak keep their name only)."""
    src = holder.find("source")
    if src is None:
        return {}
    cls = _BY_DISK_TYPE.get(holder.get("type", ""))
    if cls is None:
        cls = PROTOCOLS.get(src.get("protocol", ""))
    if cls is None:
        return normal({"protocol": src.get("protocol", ""), "name": src.get("name", "")})
    return normal(cls.read_key(src))


def objects(handles: Iterable[dict[str, Any]]) -> list[str]:
    """The ``--object`` arguments for nodes built by ``blockdev`` from ``handles``
    (each object once, however many nodes refer to it)."""
    found: dict[str, ImageObject] = {}
    for h in handles:
        for obj in of(h).objects():
            found.setdefault(obj.id, obj)
    return [a for obj in found.values() for a in obj.args()]


def prepare(handles: Iterable[dict[str, Any]], access: HostAccess) -> None:
    """Make the local credentials every handle needs current (see ``Handle.prepare``)."""
    for h in handles:
        of(h).prepare(access)


def secrets(handles: Iterable[dict[str, Any]]) -> list[LibvirtSecret]:
    """The libvirt secrets domains opening ``handles`` need, each once."""
    found: dict[str, LibvirtSecret] = {}
    for h in handles:
        for s in of(h).secrets():
            found.setdefault(s.uuid, s)
    return list(found.values())


def no_online_resize(key: dict[str, str]) -> str:
    """Why a running guest cannot see the disk ``key`` (from ``read_source``) grow;
    empty when it can."""
    cls = PROTOCOLS.get(key.get("protocol", ""))
    return cls.no_online_resize if cls else ""


def uses_secrets(protocol: str) -> bool:
    """Do disks of ``protocol`` need libvirt secrets defined before a domain starts?"""
    cls = PROTOCOLS.get(protocol)
    return bool(cls and cls.uses_secrets)
