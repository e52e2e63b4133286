"""What every protocol's handle class offers the host side.

A binding handle is the dict the control plane hands a host (``protocol``,
``uri``, ``readonly`` and the protocol's own fields). Its class turns it into
what each consumer on the host speaks::

    handle dict ──> Handle subclass (one per protocol, found in handles.PROTOCOLS)
                      key()          what names the data: compared with a domain's XML
                      fill(holder)   <disk>/<backingStore> type= and <source ...>
                      blockdev()     QEMU protocol node (QMP blockdev-add, json: specs)
                      objects()      the --object definitions that node refers to
                      image_args()   qemu-img/qemu-io arguments opening it as raw
                      prepare(...)   local credential files it needs (NBD TLS, Ceph key)
                      secrets()      libvirt secrets a domain using it needs
                      emulator()     a QEMU wrapper the domain needs, if any

``key`` and ``read_key`` agree on one flat shape per protocol, so "does this
disk open that binding" is a dict comparison, whichever side it comes from.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import InvalidInput
from ..libvirtsecrets import LibvirtSecret


@dataclass(frozen=True)
class HostAccess:
    """Where this host keeps the credentials its bindings need (``client`` and
    ``host`` fetch NBD certificates; Ceph keys come inside the handle)."""

    client: Any  # vvhost.client.Client; Any keeps this module free of the HTTP client
    host: str
    nbd_tls_dir: str
    ceph_dir: str


@dataclass(frozen=True)
class ImageObject:
    """One qemu-img ``--object``: its id (several nodes may refer to one) and spec."""

    id: str
    spec: str

    def args(self) -> list[str]:
        return ["--object", self.spec]


def esc(value: object) -> str:
    """A value inside a QEMU ``key=value,...`` option string."""
    return str(value).replace(",", ",,")


def split_hostport(address: str) -> tuple[str, str]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), port


def normal(src: Mapping[str, str]) -> dict[str, str]:
    """A source key without its empty fields."""
    return {k: v for k, v in src.items() if v}


class Handle(ABC):
    """A binding handle of one protocol."""

    protocol: ClassVar[str]
    disk_type: ClassVar[str] = "network"  # <disk type=...> in libvirt
    uses_secrets: ClassVar[bool] = False  # do its disks need libvirt secrets?
    # why a running guest cannot see such a disk grow ("" when it can)
    no_online_resize: ClassVar[str] = ""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    @property
    def uri(self) -> str:
        return str(self.raw["uri"])

    @property
    def readonly(self) -> bool:
        return bool(self.raw.get("readonly"))

    # -- naming the data --------------------------------------------------------------------
    @abstractmethod
    def key(self) -> dict[str, str]:
        """The disk source this handle stands for, in the shape ``read_key`` gives."""

    @classmethod
    @abstractmethod
    def read_key(cls, src: ET.Element) -> dict[str, str]:
        """The key of a ``<source>`` element of this protocol in a domain's XML."""

    def same(self, key: Mapping[str, str] | None) -> bool:
        """Does ``key`` (read from XML or another handle) name this handle's data?"""
        return key is not None and normal(key) == normal(self.key())

    # -- libvirt ----------------------------------------------------------------------------
    def fill(self, holder: ET.Element) -> None:
        """Give a ``<disk>``, ``<backingStore>`` or ``<mirror>``-like element its
        type and ``<source>`` (placed after ``<driver>``/``<format>``)."""
        holder.set("type", self.disk_type)
        holder.insert(1, self.source_element())

    @abstractmethod
    def source_element(self) -> ET.Element:
        """The ``<source>`` element that opens this handle."""

    def emulator(self) -> str | None:
        """The ``<emulator>`` a domain with this disk must run, when the default
        QEMU cannot open it as libvirt describes it (None: the default will do)."""
        return None

    def hotplug_problem(self) -> str:
        """Why libvirt cannot add this handle to a running domain (block copy
        destination, snapshot overlay); empty when it can."""
        return ""

    def secrets(self) -> list[LibvirtSecret]:
        """libvirt secrets a domain opening this handle needs (defined before it starts)."""
        return []

    # -- QEMU -------------------------------------------------------------------------------
    @abstractmethod
    def node(self) -> dict[str, Any]:
        """The protocol node's options without ``read-only``."""

    def blockdev(self) -> dict[str, Any]:
        """The QEMU protocol node that opens this handle (blockdev-add, ``json:``)."""
        node = self.node()
        if self.readonly:
            node["read-only"] = True
        return node

    def objects(self) -> list[ImageObject]:
        """The ``--object`` definitions ``blockdev`` refers to."""
        return []

    def image_args(self, target: bool = False, with_objects: bool = True) -> list[str]:
        """qemu-img arguments that open this handle as raw: to read (``-f raw`` /
        ``--image-opts``) or, with ``target``, to write into (``-O raw`` /
        ``--target-image-opts``); ``with_objects`` puts the ``--object``s first."""
        if target and self.readonly:
            raise InvalidInput(detail=f"binding {self.uri} is read-only")
        opts = self.image_opts()
        if opts is None:
            return ["-O" if target else "-f", "raw", self.uri]
        objs = [a for o in self.objects() for a in o.args()] if with_objects else []
        return [*objs, "--target-image-opts" if target else "--image-opts", opts]

    def image_opts(self) -> str | None:
        """``--image-opts`` options opening the handle as raw, or None when its
        URI alone will do."""
        return None

    # -- this host --------------------------------------------------------------------------
    def prepare(self, access: HostAccess) -> None:  # noqa: B027 - most protocols need none
        """Make the local files this handle's users need current (and note where
        they are in the handle)."""
