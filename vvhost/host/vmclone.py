"""``vvhost vm clone``: a new VM whose disks are full or linked clones of another
VM's disks, as they are now or as a snapshot point holds them.

A linked clone's disks are array clones whose parents are the source's vvols:
the catalog's reference counts keep those parents (and so the source's point)
from being deleted while the clone exists.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import libvirt

from ..errors import AlreadyExists, InvalidInput
from ..units import check_name
from . import domainxml as dx
from .vmdoc import VmDoc
from .vmop import Stun, VmOps
from .vms import VmManager


class VmCloner:
    def __init__(self, vms: VmManager) -> None:
        self.vms = vms
        self.client = vms.client
        self.ops = VmOps(vms)

    def clone(
        self,
        name: str,
        new: str,
        snapshot: str | None = None,
        linked: bool = False,
        serial_log: str | None = None,
    ) -> dict[str, Any]:
        check_name(new, what="VM name")
        try:
            self.vms.conn.lookupByName(new)
            raise AlreadyExists(kind="VM", ref=new)
        except libvirt.libvirtError:
            pass
        with self.ops.operation(name, "vm-clone") as (dom, doc):
            return self._clone(dom, doc, name, new, snapshot, linked, serial_log)

    def _clone(
        self,
        dom: libvirt.virDomain,
        doc: VmDoc,
        name: str,
        new: str,
        snapshot: str | None,
        linked: bool,
        serial_log: str | None,
    ) -> dict[str, Any]:
        chains: dict[str, list[str]] = {}  # redo mode: what to flatten, per disk
        if snapshot is not None:
            point = doc.point(snapshot)
            xml = point.xml
            if point.mode == "redo":
                chains, sources, temps = dict(point.layers), {}, list[str]()
            else:
                sources, temps = dict(point.disks), list[str]()
        else:
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            if doc.layers:
                if dom.isActive():
                    raise InvalidInput(
                        detail=f"VM {name} is running on redo chains: take a snapshot and "
                        "clone from it"
                    )
                chains = {t: [*doc.layers.get(t, []), top] for t, top in doc.disks.items()}
                sources, temps = {}, list[str]()
            else:
                sources, temps = self._sources_now(dom, doc, linked)
        if chains and linked:
            raise InvalidInput(
                detail=f"VM {name} keeps redo-mode (qcow2) snapshots: linked clones need "
                "array snapshots (COW mode); make a full clone"
            )
        made: list[str] = []
        try:
            disks = self._copy(new, doc, sources, linked, made)
            disks.update(self._flatten(new, doc, chains, made))
            root = self._definition(xml, new, made[0], disks, doc, serial_log)
            meta = dx.meta(root)
            assert meta is not None
            self.vms._point_sources(root, meta)
            self.vms.conn.defineXML(dx.tostring(root))
            self.vms._save(meta, root, new)
        except BaseException:
            self.vms._forget(new, made)
            raise
        finally:
            self.ops.drop(list(temps))
        return self.vms.show(new)

    def _sources_now(
        self, dom: libvirt.virDomain, doc: VmDoc, linked: bool
    ) -> tuple[dict[str, str], list[str]]:
        """The disks as they are now; a running VM's through a crash-consistent
        temporary snapshot (dropped once the clone is made)."""
        if not dom.isActive():
            return dict(doc.disks), []
        if linked:
            raise InvalidInput(
                detail=f"VM {doc.name} is running: a linked clone needs a snapshot point "
                "to hang from; take one and clone with --snapshot"
            )
        tag = uuid.uuid4().hex[:8]
        targets = list(doc.disks)
        made: list[str] = []
        try:  # one snapshot group: only the array's cut waits for the paused guest
            prepared = self.client.snapshot_prepare(
                [doc.disks[t] for t in targets],
                [f"{doc.name}.{t}@clone-{tag}" for t in targets],
            )
            made = [p["id"] for p in prepared]
            with Stun(dom, quiesce=False):
                self.client.snapshot_cut(made)
            self.client.snapshot_commit(made)
        except BaseException:
            self.ops.discard(made)
            raise
        return dict(zip(targets, made, strict=True)), made

    def _copy(
        self, new: str, doc: VmDoc, sources: dict[str, str], linked: bool, made: list[str]
    ) -> dict[str, str]:
        """Make the new config vvol and the disk clones (ids appended to ``made`` as
        they appear, so a failure can undo them); return target -> new vvol."""
        config = self.client.vvol_create(
            None,
            "1M",
            type="config",
            name=f"{new}.config",
            metadata={"vm": new},
            datastore=doc.datastore,
            pe=doc.pe,  # where the clone's endpoint reaches, as for the source
        )
        made.append(config["id"])
        disks: dict[str, str] = {}
        for target, src in sources.items():
            c = self.client.vvol_clone(src, linked=linked, name=f"{new}.{target}")
            made.append(c["id"])
            disks[target] = c["id"]
            self.client.vvol_meta(c["id"], [f"vm={new}", f"target={target}"])
        return disks

    def _flatten(
        self, new: str, doc: VmDoc, chains: dict[str, list[str]], made: list[str]
    ) -> dict[str, str]:
        """Full clones of redo chains: each read through its layers into one raw vvol."""
        from .redo import RedoSnapshots

        disks: dict[str, str] = {}
        for target, chain in chains.items():
            size = self.client.vvol(chain[0])["size"]
            v = self.client.vvol_create(
                None,
                size,
                name=f"{new}.{target}",
                metadata={"vm": new, "target": target},
                datastore=doc.datastore,
                pe=doc.pe,
            )
            made.append(v["id"])
            disks[target] = v["id"]
            RedoSnapshots(self.ops).flatten(doc, chain, v["id"])
        return disks

    def _definition(
        self,
        xml: str,
        new: str,
        config: str,
        disks: dict[str, str],
        doc: VmDoc,
        serial_log: str | None,
    ) -> dx.ET.Element:
        """The source's definition under a new name, uuid and disks; a serial log
        goes next to the source's as NEW.serial (or to ``serial_log``), and a
        serial socket gets a name of its own in the same directory."""
        root = dx.parse(xml)
        root.find("name").text = new  # type: ignore[union-attr]
        for el in root.findall("uuid"):
            root.remove(el)
        old = dx.meta(root)
        pe = old.pe if old else None
        dx.set_meta(root, dx.VmMeta(datastore=doc.datastore, config=config, disks=disks, pe=pe))
        for serial in root.findall("devices/serial"):
            src = serial.find("source")
            path = src.get("path") if src is not None else None
            if src is None or not path:
                continue
            here = os.path.dirname(path)
            if serial.get("type") == "file":
                src.set("path", serial_log or os.path.join(here, f"{new}.serial"))
            else:  # a socket of its own, beside the source VM's
                src.set("path", os.path.join(here, f"{new}-{os.path.basename(path)}"))
        return root
