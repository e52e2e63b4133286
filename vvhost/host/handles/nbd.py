"""``nbd`` bindings: an export of a qemu-storage-daemon, on a unix socket or on
TCP with TLS (this host's client certificate, see host/nbdtls.py).

    handle   {"protocol": "nbd", "export": KEY, "socket": PATH | None,
              "uri": "nbd+unix:///KEY?socket=PATH" | "nbd://H:P/KEY",
              "tls": None | {"type": "x509", "identity": DN, "dir": (set by prepare)}}
    libvirt  <disk type='network'><source protocol='nbd' name=KEY [tls='yes']>
               <host transport='unix' socket=PATH/> | <host name=H port=P/></source>
    QEMU     {"driver": "nbd", "server": {unix|inet}, "export": KEY,
              "tls-creds": "vvtls0"}  + --object tls-creds-x509,id=vvtls0,...
    qemu-img the URI; with TLS --object ... --image-opts driver=raw,file.driver=nbd,...
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from .. import nbdtls
from .base import Handle, HostAccess, ImageObject, esc, split_hostport


class NbdHandle(Handle):
    protocol = "nbd"
    no_online_resize = "NBD, whose QEMU client cannot grow a disk it has open"

    @property
    def export(self) -> str:
        return str(self.raw["export"])

    @property
    def tls(self) -> bool:
        return nbdtls.needs_tls(self.raw)

    def _inet(self) -> tuple[str, str]:
        return split_hostport(self.uri[len("nbd://") :].split("/")[0])

    def key(self) -> dict[str, str]:
        if self.raw.get("socket"):
            socket = str(self.raw["socket"])
            return {"protocol": "nbd", "name": self.export, "transport": "unix", "socket": socket}
        host, port = self._inet()
        return {"protocol": "nbd", "name": self.export, "host_name": host, "port": port}

    @classmethod
    def read_key(cls, src: ET.Element) -> dict[str, str]:
        out = {"protocol": "nbd", "name": src.get("name", "")}
        host = src.find("host")
        if host is not None:
            out.update(
                host_name=host.get("name", ""),
                port=host.get("port", ""),
                transport=host.get("transport", ""),
                socket=host.get("socket", ""),
            )
        return out

    def source_element(self) -> ET.Element:
        key = self.key()
        src = ET.Element("source", protocol="nbd", name=self.export)
        if key.get("transport") == "unix":
            ET.SubElement(src, "host", transport="unix", socket=key["socket"])
        else:
            ET.SubElement(src, "host", name=key["host_name"], port=key["port"])
        if self.tls:
            src.set("tls", "yes")  # libvirt: the client cert in qemu.conf nbd_tls_x509_cert_dir
        return src

    def node(self) -> dict[str, Any]:
        key = self.key()
        if key.get("transport") == "unix":
            server = {"type": "unix", "path": key["socket"]}
        else:
            server = {"type": "inet", "host": key["host_name"], "port": key["port"]}
        node: dict[str, Any] = {"driver": "nbd", "server": server, "export": self.export}
        if self.tls:
            node["tls-creds"] = nbdtls.OBJECT_ID
        return node

    def objects(self) -> list[ImageObject]:
        if not self.tls:
            return []
        directory = str(self.raw["tls"].get("dir") or nbdtls.DEFAULT_DIR)
        return [ImageObject(nbdtls.OBJECT_ID, nbdtls.client_object(directory))]

    def image_opts(self) -> str | None:
        if not self.tls:
            return None
        host, port = self._inet()
        return (
            f"driver=raw,file.driver=nbd,file.server.type=inet,file.server.host={host},"
            f"file.server.port={port},file.export={esc(self.export)},"
            f"file.tls-creds={nbdtls.OBJECT_ID}"
        )

    def prepare(self, access: HostAccess) -> None:
        nbdtls.ensure(access.client, access.host, [self.raw], access.nbd_tls_dir)
