"""``iscsi`` bindings: a LUN of the endpoint's per-host target (tgtd).

handle   {"protocol": "iscsi", "uri": "iscsi://PORTAL/IQN/LUN", "portal": "H:P",
          "target": IQN, "lun": N, "initiator": HOST-IQN}
libvirt  <disk type='network'><source protocol='iscsi' name='IQN/LUN'>
           <host name=H port=P/><initiator><iqn name=HOST-IQN/></initiator></source>
QEMU     {"driver": "iscsi", "transport": "tcp", "portal", "target", "lun",
          "initiator-name"}
qemu-img --image-opts driver=raw,file.driver=iscsi,...,file.initiator-name=HOST-IQN
         (the ACL admits only the host's initiator name), else the URI
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from .base import Handle, split_hostport


class IscsiHandle(Handle):
    protocol = "iscsi"

    @property
    def initiator(self) -> str | None:
        value = self.raw.get("initiator")
        return str(value) if value else None

    def key(self) -> dict[str, str]:
        host, port = split_hostport(str(self.raw["portal"]))
        name = f"{self.raw['target']}/{self.raw['lun']}"
        return {"protocol": "iscsi", "name": name, "host_name": host, "port": port}

    @classmethod
    def read_key(cls, src: ET.Element) -> dict[str, str]:
        out = {"protocol": "iscsi", "name": src.get("name", "")}
        host = src.find("host")
        if host is not None:
            out.update(host_name=host.get("name", ""), port=host.get("port", ""))
        return out

    def source_element(self) -> ET.Element:
        key = self.key()
        src = ET.Element("source", protocol="iscsi", name=key["name"])
        ET.SubElement(src, "host", name=key["host_name"], port=key["port"])
        if self.initiator:
            ini = ET.SubElement(src, "initiator")
            ET.SubElement(ini, "iqn").set("name", self.initiator)
        return src

    def node(self) -> dict[str, Any]:
        node: dict[str, Any] = {
            "driver": "iscsi",
            "transport": "tcp",
            "portal": self.raw["portal"],
            "target": self.raw["target"],
            "lun": int(self.raw["lun"]),
        }
        if self.initiator:
            node["initiator-name"] = self.initiator
        return node

    def image_opts(self) -> str | None:
        if not self.initiator:
            return None
        return (
            f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={self.raw['portal']},"
            f"file.target={self.raw['target']},file.lun={self.raw['lun']},"
            f"file.initiator-name={self.initiator}"
        )
