"""``iscsi`` bindings: a LUN of the endpoint's per-host target (tgtd).

handle   {"protocol": "iscsi", "uri": "iscsi://PORTAL/IQN/LUN", "portal": "H:P",
          "target": IQN, "lun": N, "initiator": HOST-IQN,
          "chap_user": USER, "chap_secret": SECRET}     (per-host targets: CHAP)
libvirt  <disk type='network'><source protocol='iscsi' name='IQN/LUN'>
           <host name=H port=P/><initiator><iqn name=HOST-IQN/></initiator>
           <auth username=USER><secret type='iscsi' uuid=U/></auth></source>
           (U: host/iscsisecret.py; defined before the domain starts)
QEMU     {"driver": "iscsi", "transport": "tcp", "portal", "target", "lun",
          "initiator-name", "user", "password-secret": "vviscsi-USER"}
          + --object secret,id=vviscsi-USER,file=ISCSI_DIR/USER.secret
qemu-img --image-opts driver=raw,file.driver=iscsi,...,file.initiator-name=HOST-IQN
         (the target admits only the host's initiator name with its CHAP
         account), else the URI
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from ...errors import InvalidInput
from .. import iscsisecret
from .base import Handle, HostAccess, ImageObject, LibvirtSecret, esc, split_hostport


class IscsiHandle(Handle):
    protocol = "iscsi"
    uses_secrets = True  # when the target asks for CHAP

    @property
    def chap_user(self) -> str | None:
        value = self.raw.get("chap_user")
        return iscsisecret.check_user(str(value)) if value else None

    def _chap_secret(self) -> str:
        value = self.raw.get("chap_secret")
        if not value or not isinstance(value, str):
            raise InvalidInput(detail=f"iscsi binding {self.raw.get('uri')} has no CHAP secret")
        return value

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
        user = self.chap_user
        if user:
            auth = ET.SubElement(src, "auth", username=user)
            ET.SubElement(auth, "secret", type="iscsi", uuid=iscsisecret.secret_uuid(user))
        return src

    def secrets(self) -> list[LibvirtSecret]:
        user = self.chap_user
        return [iscsisecret.IscsiSecret(user, self._chap_secret())] if user else []

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
        user = self.chap_user
        if user:
            node["user"] = user
            node["password-secret"] = iscsisecret.object_id(user)
        return node

    def objects(self) -> list[ImageObject]:
        user = self.chap_user
        if not user:
            return []
        path = self.raw.get("chap_file")
        if not path:
            raise InvalidInput(
                detail=f"the CHAP secret of iscsi binding {self.raw.get('uri')} is not on "
                "this host (the binding was not prepared)"
            )
        oid = iscsisecret.object_id(user)
        return [ImageObject(oid, f"secret,id={oid},file={esc(path)}")]

    def image_opts(self) -> str | None:
        if not self.initiator and not self.chap_user:
            return None
        opts = [
            "driver=raw",
            "file.driver=iscsi",
            "file.transport=tcp",
            f"file.portal={self.raw['portal']}",
            f"file.target={self.raw['target']}",
            f"file.lun={self.raw['lun']}",
        ]
        node = self.node()
        for name in ("initiator-name", "user", "password-secret"):
            if name in node:
                opts.append(f"file.{name}={esc(node[name])}")
        return ",".join(opts)

    # -- this host --------------------------------------------------------------------------
    def prepare(self, access: HostAccess) -> None:
        user = self.chap_user
        if user:
            directory = iscsisecret.secret_dir(access.ceph_dir)
            self.raw["chap_file"] = iscsisecret.write_secret(directory, user, self._chap_secret())
