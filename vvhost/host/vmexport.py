"""``vvhost vm export`` / ``vvhost vm import``: a VM and its snapshots as plain files.

    DIR/
      domain.xml              boots with plain libvirt: file disks, the top qcow2 of
                              each chain (the backing files are named in the headers)
      vm.json                 name, the snapshot tree, and each disk's files
      vda/01-s1.qcow2         one qcow2 per point, oldest first, each holding only
      vda/02-s2.qcow2         what changed since the point below (``convert
      vda/03-current.qcow2    cow-to-redo``); the top is the VM's current state

Import is the reverse (``convert redo-to-cow`` per disk): a new VM on vvols in a
datastore, its snapshots rebuilt with the same names and tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any

import libvirt

from .. import convert
from ..errors import AlreadyExists, InUse, InvalidInput
from ..units import check_name
from . import domainxml as dx
from . import qemuwrap
from .vmdoc import Point, VmDoc
from .vmop import VmOps
from .vms import VmManager, delete_all

MANIFEST = "vm.json"
DOMAIN = "domain.xml"


class VmPorter:
    def __init__(self, vms: VmManager) -> None:
        self.vms = vms
        self.client = vms.client

    # -- export -------------------------------------------------------------------------------
    def export(self, name: str, to: str) -> dict[str, Any]:
        with VmOps(self.vms).operation(name, "vm-export") as (dom, doc):
            return self._export(dom, doc, name, to)

    def _export(self, dom: libvirt.virDomain, doc: VmDoc, name: str, to: str) -> dict[str, Any]:
        if dom.isActive():
            raise InUse(kind="VM", ref=name, reason="it is running; stop it to export it")
        if doc.layers or doc.mode == "redo":
            raise InvalidInput(
                detail=f"VM {name} takes redo-mode snapshots; export works on COW-mode VMs"
            )
        if os.path.exists(to) and os.listdir(to):
            raise InvalidInput(detail=f"{to} is not empty")
        made_dir = not os.path.exists(to)
        os.makedirs(to, exist_ok=True)
        try:
            files: dict[str, list[str]] = {}
            for target, vvol in doc.disks.items():
                layers = convert.cow_to_redo(
                    self.client, vvol, os.path.join(to, target), verify=True
                )
                files[target] = [os.path.relpath(layer.file, to) for layer in layers]
            root = dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            _plain(root, {t: os.path.abspath(os.path.join(to, f[-1])) for t, f in files.items()})
            with open(os.path.join(to, DOMAIN), "w", encoding="utf-8") as fh:
                fh.write(dx.tostring(root))
            manifest = {
                "name": name,
                "current": doc.current,
                "points": [_point_doc(p) for p in doc.points],
                "disks": files,
            }
            with open(os.path.join(to, MANIFEST), "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=2, sort_keys=True)
        except BaseException:
            _remove_written(to, made_dir)
            raise
        return {"vm": name, "to": to, "disks": files, "domain": os.path.join(to, DOMAIN)}

    # -- import -------------------------------------------------------------------------------
    def import_(self, src: str, datastore: str, name: str | None = None) -> dict[str, Any]:
        manifest = _read_manifest(src)
        new = check_name(name or str(manifest["name"]), what="VM name")
        try:
            self.vms.conn.lookupByName(new)
            raise AlreadyExists(kind="VM", ref=new)
        except libvirt.libvirtError:
            pass
        with open(os.path.join(src, DOMAIN), encoding="utf-8") as fh:
            root = dx.parse(fh.read())
        pe = self.vms._pick_pe(datastore, None)
        made: list[str] = []
        try:
            config = self.client.vvol_create(
                None, "1M", type="config", name=f"{new}.config", metadata={"vm": new},
                datastore=datastore, pe=pe,
            )  # fmt: skip
            made.append(config["id"])
            disks: dict[str, str] = {}
            snaps: dict[str, dict[str, str]] = {}  # point label -> target -> snapshot vvol
            for target, files in manifest["disks"].items():
                got = convert.redo_to_cow(
                    self.client,
                    os.path.join(src, files[-1]),
                    datastore=datastore,
                    name=f"{new}.{target}",
                    metadata={"vm": new, "target": target},
                    pe=pe,
                )
                made.append(got["vvol"]["id"])
                made += [s["id"] for s in got["snapshots"]]
                disks[target] = got["vvol"]["id"]
                for s in got["snapshots"]:
                    label = str(s["name"]).rsplit("@", 1)[-1]
                    snaps.setdefault(label, {})[target] = s["id"]
            root.find("name").text = new  # type: ignore[union-attr]
            for el in root.findall("uuid"):
                root.remove(el)
            meta = dx.VmMeta(datastore=config["datastore"], config=config["id"], disks=disks, pe=pe)
            dx.set_meta(root, meta)
            self.vms._point_sources(root, meta)
            self.vms.conn.defineXML(dx.tostring(root))
            self.vms._save(meta, root, new)
            doc = VmDoc.load(self.client, config["id"])
            for p in manifest["points"]:
                doc.points.append(
                    Point.from_dict({**p, "mode": "cow", "disks": snaps.get(p["name"], {})})
                )
            doc.current, doc.mode = manifest.get("current"), "cow" if doc.points else None
            doc.save(self.client)
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                self.vms.conn.lookupByName(new).undefine()
            delete_all(self.client, made)
            raise
        return self.vms.show(new)


def _point_doc(p: Point) -> dict[str, Any]:
    return {
        "name": p.name,
        "parent": p.parent,
        "description": p.description,
        "created": p.created,
    }


def _plain(root: dx.ET.Element, tops: dict[str, str]) -> None:
    """Make the definition boot without vvhost: no metadata, file disks on the tops."""
    md = root.find("metadata")
    if md is not None:
        for el in md.findall(f"{{{dx.NS}}}vm"):
            md.remove(el)
        if not len(md):
            root.remove(md)
    devices = root.find("devices")
    if devices is not None:
        for emulator in devices.findall("emulator"):
            if emulator.text == qemuwrap.PATH:  # only vvhost hosts have it
                devices.remove(emulator)
    for target, path in tops.items():
        dx.set_source(root, target, {"protocol": "file", "path": path})
        for disk in root.findall("devices/disk"):
            t = disk.find("target")
            driver = disk.find("driver")
            if t is not None and t.get("dev") == target and driver is not None:
                driver.set("type", "qcow2")


def _read_manifest(src: str) -> dict[str, Any]:
    path = os.path.join(src, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("disks"), dict):
            raise ValueError("no disks")
        for files in manifest["disks"].values():
            if not files or any(os.path.isabs(f) or ".." in f.split("/") for f in files):
                raise ValueError("bad file names")
        return manifest
    except (OSError, ValueError) as exc:
        raise InvalidInput(detail=f"{src} is not a vvhost VM export: {exc}") from None


def _remove_written(to: str, made_dir: bool) -> None:
    if made_dir:
        shutil.rmtree(to, ignore_errors=True)
        return
    for entry in os.listdir(to):
        path = os.path.join(to, entry)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
