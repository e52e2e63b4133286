"""``file`` bindings: the vvol appears as a file on an NFS-like share.

handle   {"protocol": "file", "uri": "file:///SHARE/KEY", "path": "/SHARE/KEY"}
libvirt  <disk type='file'><source file='/SHARE/KEY'/>
QEMU     {"driver": "file", "filename": "/SHARE/KEY"}
qemu-img -f raw file:///SHARE/KEY
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from .base import Handle


class FileHandle(Handle):
    protocol = "file"
    disk_type = "file"

    @property
    def path(self) -> str:
        return str(self.raw["path"])

    def key(self) -> dict[str, str]:
        return {"file": self.path}

    @classmethod
    def read_key(cls, src: ET.Element) -> dict[str, str]:
        return {"file": src.get("file", "")}

    def source_element(self) -> ET.Element:
        return ET.Element("source", file=self.path)

    def node(self) -> dict[str, Any]:
        return {"driver": "file", "filename": self.path}
