"""``rbd`` bindings: QEMU opens the RBD image itself through librbd, as this
host's own Ceph identity, whose caps reach only its tenant's namespaces.

    handle   {"protocol": "rbd", "uri": "rbd:POOL/NS/IMAGE[@SNAP]", "pool", "namespace",
              "image", "snap": SNAP | None, "monitors": ["H:P", ...],
              "user": "vvhost-HOST", "key": "<cephx key, base64>", "readonly": bool}
    libvirt  <disk type='network'>
               <source protocol='rbd' name='POOL/NS/IMAGE'>
                 [<snapshot name='SNAP'/>] <host name=H port=P/>...
                 <auth username='vvhost-HOST'><secret type='ceph' uuid=U/></auth>
               </source>          (U: host/cephsecret.py; defined before the domain starts)
             libvirt 9.0 hands QEMU image=NS/IMAGE: with a namespace the domain runs
             host/qemuwrap.py as its <emulator>, which makes the namespace explicit
    QEMU     {"driver": "rbd", "pool", "namespace", "image", "snapshot", "user",
              "server": [{"host", "port"}], "auth-client-required": ["cephx"],
              "key-secret": "vvrbd-USER"}  + --object secret,id=vvrbd-USER,
              file=CEPH_DIR/USER.key,format=base64   (the key never shows in ps)
    qemu-img --object ... --image-opts driver=raw,file.driver=rbd,...

The data is named by pool, namespace, image and snapshot: two handles with those
equal open the same data whichever monitors or identity they go through.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from ...errors import InvalidInput
from .. import cephsecret, qemuwrap
from .base import Handle, HostAccess, ImageObject, LibvirtSecret, esc, split_hostport


class RbdHandle(Handle):
    protocol = "rbd"
    uses_secrets = True

    def _field(self, name: str) -> str:
        value = self.raw.get(name)
        if not value or not isinstance(value, str):
            why = f": {self.raw['error']}" if self.raw.get("error") else ""
            raise InvalidInput(detail=f"rbd binding {self.raw.get('uri')} has no {name}{why}")
        return value

    @property
    def pool(self) -> str:
        return self._field("pool")

    @property
    def namespace(self) -> str:
        return str(self.raw.get("namespace") or "")

    @property
    def image(self) -> str:
        return self._field("image")

    @property
    def snap(self) -> str | None:
        value = self.raw.get("snap")
        return str(value) if value else None

    @property
    def user(self) -> str:
        return self._field("user")

    @property
    def readonly(self) -> bool:
        return bool(self.raw.get("readonly")) or self.snap is not None  # snapshots are

    def monitors(self) -> list[tuple[str, str]]:
        mons = self.raw.get("monitors") or []
        if not mons:
            raise InvalidInput(detail=f"rbd binding {self.raw.get('uri')} names no monitor")
        return [split_hostport(str(m)) for m in mons]

    @property
    def name(self) -> str:
        """libvirt's ``name``: POOL/NS/IMAGE, or POOL/IMAGE in the default namespace."""
        parts = (
            [self.pool, self.namespace, self.image] if self.namespace else [self.pool, self.image]
        )
        return "/".join(parts)

    @property
    def secret_id(self) -> str:
        """The QOM id of the key's secret object (one per Ceph user)."""
        return "vvrbd-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.user)

    # -- naming the data --------------------------------------------------------------------
    def key(self) -> dict[str, str]:
        return {"protocol": "rbd", "name": self.name, "snapshot": self.snap or ""}

    @classmethod
    def read_key(cls, src: ET.Element) -> dict[str, str]:
        snap = src.find("snapshot")
        return {
            "protocol": "rbd",
            "name": src.get("name", ""),
            "snapshot": snap.get("name", "") if snap is not None else "",
        }

    # -- libvirt ----------------------------------------------------------------------------
    def source_element(self) -> ET.Element:
        src = ET.Element("source", protocol="rbd", name=self.name)
        if self.snap:
            ET.SubElement(src, "snapshot", name=self.snap)
        for host, port in self.monitors():
            ET.SubElement(src, "host", name=host, port=port)
        auth = ET.SubElement(src, "auth", username=self.user)
        ET.SubElement(auth, "secret", type="ceph", uuid=cephsecret.secret_uuid(self.user))
        return src

    def emulator(self) -> str | None:
        return qemuwrap.PATH if self.namespace else None

    def hotplug_problem(self) -> str:
        if not self.namespace:
            return ""
        return (
            "libvirt 9.0 cannot open an RBD image in a RADOS namespace for a running domain "
            "(its nodes added over QMP miss the namespace); stop the VM first"
        )

    def secrets(self) -> list[LibvirtSecret]:
        return [cephsecret.CephSecret(self.user, self._field("key"))]

    # -- QEMU -------------------------------------------------------------------------------
    def node(self) -> dict[str, Any]:
        node: dict[str, Any] = {"driver": "rbd", "pool": self.pool}
        if self.namespace:
            node["namespace"] = self.namespace
        node["image"] = self.image
        if self.snap:
            node["snapshot"] = self.snap
        node.update(
            {
                "user": self.user,
                "server": [{"host": h, "port": p} for h, p in self.monitors()],
                "auth-client-required": ["cephx"],
                "key-secret": self.secret_id,
            }
        )
        return node

    def objects(self) -> list[ImageObject]:
        path = self.raw.get("key_file")
        if not path:
            raise InvalidInput(
                detail=f"the Ceph key of rbd binding {self.raw.get('uri')} is not on this host "
                "(the binding was not prepared)"
            )
        spec = f"secret,id={self.secret_id},file={esc(path)},format=base64"
        return [ImageObject(self.secret_id, spec)]

    def image_opts(self) -> str:
        node = self.node()
        opts = ["driver=raw", "file.driver=rbd"]
        if self.readonly:
            opts.append("read-only=on")
        for name in ("pool", "namespace", "image", "snapshot", "user", "key-secret"):
            if name in node:
                opts.append(f"file.{name}={esc(node[name])}")
        for i, (host, port) in enumerate(self.monitors()):
            opts += [f"file.server.{i}.host={esc(host)}", f"file.server.{i}.port={port}"]
        opts.append("file.auth-client-required.0=cephx")
        return ",".join(opts)

    # -- this host --------------------------------------------------------------------------
    def prepare(self, access: HostAccess) -> None:
        self.raw["key_file"] = cephsecret.write_key(access.ceph_dir, self.user, self._field("key"))
