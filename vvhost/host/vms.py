"""VMs whose disks are vvols: define them in libvirt, keep their config vvol
current, and move them between hosts by their config vvol alone.

    config vvol  (type config, 1 MiB)  {"name", "xml", "disks": {target: vvol},
                                        "datastore", "pe", "host"}
    data vvols   one per disk, metadata vm=NAME target=vdX
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import libvirt

from ..client import Client
from ..errors import AlreadyExists, InUse, InvalidInput, NotFound, VvhostError
from ..tools import qemuimg
from ..units import parse_size
from . import domainxml as dx
from . import gpt, libvirtsecrets
from . import handles as hd
from .config import HostConfig
from .hook import ensure_bound, undo
from .vmdoc import VmDoc
from .vmpause import SpaceHook, SpacePause, state_of
from .vmspace import vm_space

MiB = 1 << 20
TARGETS = [f"vd{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


class VmError(VvhostError):
    code = "vm-error"
    status = 409
    exit_code = 4
    template = "{detail}"


@dataclass
class VmSpec:
    name: str
    datastore: str
    memory: int
    vcpus: int = 1
    disks: tuple[str, ...] = ()
    disk_from: tuple[str, ...] = ()
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    protocol: str | None = None
    serial_log: str | None = None


class VmManager:
    def __init__(self, conf: HostConfig, client: Client, uri: str | None = None) -> None:
        self.conf = conf
        self.client = client
        self.uri = uri or conf.libvirt
        self._conn: libvirt.virConnect | None = None
        self.lease_wait: float | None = None  # seconds to wait for a busy VM (None: refuse)
        # called when a VM is seen paused because its array is full (see host/vmpause.py)
        self.on_paused_for_space: SpaceHook | None = self.report_pause
        # libvirt prints every error on stderr by default; ours are reported as one line
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

    def report_pause(self, pause: SpacePause) -> None:
        """Tell the control plane (its event log) that a VM here is paused for space."""
        self._report(pause.vm, "paused-for-space", pause.disks)

    def report_resumed(self, name: str) -> None:
        """Tell the control plane a VM runs again (recorded only after a pause for space)."""
        self._report(name, "resumed", [])

    def _report(self, vm: str, what: str, disks: list[str]) -> None:
        with contextlib.suppress(VvhostError):  # a report never fails what the user asked
            self.client.vm_event(self.conf.name, vm, what, disks)

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise VmError(
                    detail=f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}"
                ) from None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def domain(self, name: str) -> libvirt.virDomain:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError:
            raise NotFound(kind="VM", ref=name) from None

    # -- create -----------------------------------------------------------------------------
    def create(self, spec: VmSpec, progress: bool = False) -> dict[str, Any]:
        try:
            self.conn.lookupByName(spec.name)
            raise AlreadyExists(kind="VM", ref=spec.name)
        except libvirt.libvirtError:
            pass
        if not spec.disks and not spec.disk_from:
            raise InvalidInput(detail="a VM needs at least one --disk or --disk-from")
        pe = self._pick_pe(spec.datastore, spec.protocol)
        made: list[str] = []
        try:
            config = self.client.vvol_create(
                None,
                "1M",
                type="config",
                name=f"{spec.name}.config",
                metadata={"vm": spec.name},
                datastore=spec.datastore,
                pe=pe,  # every disk on an array the VM's endpoint serves
            )
            made.append(config["id"])
            disks: dict[str, str] = {}
            sizes = [("new", s) for s in spec.disks] + [("import", i) for i in spec.disk_from]
            for target, (kind, what) in zip(TARGETS, sizes, strict=False):
                size = what if kind == "new" else f"{_image_mib(what)}M"
                v = self.client.vvol_create(
                    None,
                    size,
                    name=f"{spec.name}.{target}",
                    metadata={"vm": spec.name, "target": target},
                    datastore=spec.datastore,
                    pe=pe,
                )
                made.append(v["id"])
                disks[target] = v["id"]
                if kind == "import":
                    self._import(what, v["id"], pe, progress)
            meta = dx.VmMeta(datastore=config["datastore"], config=config["id"], disks=disks, pe=pe)
            root = dx.new_domain(
                spec.name,
                spec.memory,
                spec.vcpus,
                meta,
                spec.kernel,
                spec.initrd,
                spec.cmdline,
                spec.serial_log,
            )
            self._point_sources(root, meta)
            self.conn.defineXML(dx.tostring(root))
            self._save(meta, root, spec.name)
        except BaseException:
            self._forget(spec.name, made)
            raise
        return self.show(spec.name)

    def _pick_pe(self, datastore: str, protocol: str | None) -> str:
        if self.conf.pe and not protocol:
            return self.conf.pe
        want = protocol or self.conf.protocol
        pes = self.client.datastore_resolve(datastore, self.conf.name)["pes"]
        for p in pes:
            if p["protocol"] == want:
                return str(p["name"])
        raise InvalidInput(
            detail=f"datastore {datastore} has no {want} endpoint for host {self.conf.name}"
        )

    @contextlib.contextmanager
    def bound_here(self, vvol: str, pe: str | None) -> Iterator[dict[str, Any]]:
        """A binding of ``vvol`` on this host for the duration of a ``with`` block."""
        handle = self.client.bind_one(vvol, self.conf.name, pe=pe)
        try:
            hd.prepare([handle], self.access)
            yield handle
        finally:
            self.client.unbind([vvol], self.conf.name)

    @property
    def access(self) -> hd.HostAccess:
        return self.conf.access(self.client)

    def _import(self, image: str, vvol: str, pe: str, progress: bool) -> None:
        with self.bound_here(vvol, pe) as handle:
            try:
                qemuimg.convert([image], raw_target(handle), progress=progress)
            except qemuimg.QemuImgFailed as exc:
                raise VmError(detail=f"importing {image} failed: {exc.fields['detail']}") from None

    def _point_sources(self, root: dx.ET.Element, meta: dx.VmMeta) -> None:
        """Set each disk's source to where the vvol binds on this host (the binding
        is made and dropped again; LUN hints keep it at the same place next time)."""
        handles, made = ensure_bound(self.client, self.conf.name, meta, meta.pe, self.access)
        try:
            dx.point_sources(root, meta, handles)
            libvirtsecrets.define_all(self.conn, hd.secrets(handles.values()))
        finally:
            undo(self.client, self.conf.name, made)

    def _save(self, meta: dx.VmMeta, root: dx.ET.Element, name: str) -> None:
        """Keep the config vvol's document current (its snapshot tree is kept as is)."""
        if not meta.config:
            return
        try:
            doc = VmDoc.load(self.client, meta.config)
        except VvhostError:  # a new config vvol holds no document yet
            doc = VmDoc(config=meta.config, name=name, xml="", disks={})
        doc.name, doc.xml, doc.disks = name, dx.tostring(root), dict(meta.disks)
        doc.datastore, doc.pe, doc.host = meta.datastore, meta.pe, self.conf.name
        doc.save(self.client)

    def _forget(self, name: str, vvols: list[str]) -> None:
        """Undo a half-made VM: no domain, no vvols."""
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.lookupByName(name).undefine()
        for vid in reversed(vvols):
            with contextlib.suppress(VvhostError):
                self.client.vvol_delete(vid)

    # -- reading ----------------------------------------------------------------------------
    def _meta(self, dom: libvirt.virDomain) -> tuple[dx.ET.Element, dx.VmMeta]:
        root = dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        meta = dx.meta(root)
        if meta is None:
            raise InvalidInput(detail=f"VM {dom.name()} is not a vvhost VM")
        return root, meta

    def show(self, name: str) -> dict[str, Any]:
        dom = self.domain(name)
        _root, meta = self._meta(dom)
        bound = {b["vvol"]: b for b in self.client.bindings(host=self.conf.name)}
        space = vm_space(self.client, list(meta.disks.values()))
        return {
            "name": name,
            "space": {k: v for k, v in space.items() if k != "disks"},
            "state": state_of(dom, self.on_paused_for_space, self.client),
            "datastore": meta.datastore,
            "config": meta.config,
            "pe": meta.pe,
            "disks": [
                {
                    "target": t,
                    "vvol": v,
                    "bound": v in bound,
                    "uri": bound[v]["uri"] if v in bound else None,
                    **space["disks"].get(v, {}),
                }
                for t, v in meta.disks.items()
            ],
        }

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for dom in self.conn.listAllDomains():
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            if dx.has_vvhost(xml):
                meta = dx.meta(dx.parse(xml))
                out.append(
                    {
                        "name": dom.name(),
                        "state": state_of(dom, self.on_paused_for_space, self.client),
                        "datastore": meta.datastore if meta else None,
                        "disks": len(meta.disks) if meta else 0,
                    }
                )
        return out

    # -- life cycle -------------------------------------------------------------------------
    def start(self, name: str) -> dict[str, Any]:
        dom = self.domain(name)
        made = self.secrets_for_start(dom)
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            with contextlib.suppress(VvhostError):
                undo(self.client, self.conf.name, made)
            raise VmError(detail=f"VM {name} did not start: {exc.get_error_message()}") from None
        return self.show(name)

    def secrets_for_start(self, dom: libvirt.virDomain) -> list[str]:
        """A VM whose disks need libvirt secrets (RBD: the host's Ceph key) gets them
        current before it starts or is restored (the hook cannot: it must not call
        libvirt). Its vvols are bound for that and stay bound: the host's Ceph key
        is made anew when its identity comes back after its last binding went, so
        the hook's ``prepare`` must find these very bindings; the VM's ``release``
        drops them. Returns the vvols bound here (to undo when the start fails)."""
        root, meta = self._meta(dom)
        protocols = {
            src.get("protocol", "")
            for target in meta.disks
            for src in dx.chain_sources(root, target) or []
        }
        if not any(hd.uses_secrets(p) for p in protocols):
            return []
        handles, made = ensure_bound(self.client, self.conf.name, meta, meta.pe, self.access)
        try:
            libvirtsecrets.define_all(self.conn, hd.secrets(handles.values()))
        except BaseException:
            undo(self.client, self.conf.name, made)
            raise
        return made

    def stop(self, name: str, force: bool = False, timeout: float = 30.0) -> dict[str, Any]:
        dom = self.domain(name)
        if dom.isActive():
            if not force:
                dom.shutdown()
                deadline = time.monotonic() + timeout
                while dom.isActive() and time.monotonic() < deadline:
                    time.sleep(0.2)
            if dom.isActive():
                dom.destroy()
        return self.show(name)

    def delete(self, name: str) -> None:
        """Undefine a stopped VM and delete every vvol it owns: disks, snapshot points
        and config.  Refused while a linked clone made from it exists."""
        dom = self.domain(name)
        _root, meta = self._meta(dom)
        if dom.isActive():
            raise InUse(kind="VM", ref=name, reason="it is running; stop it first")
        owned = {v for v in list(meta.disks.values()) + [meta.config] if v}
        if meta.config:
            with contextlib.suppress(VvhostError):
                owned |= VmDoc.load(self.client, meta.config).all_vvols()
        infos = {v: self.client.vvol(v) for v in owned}
        for info in infos.values():
            foreign = [d for d in info["snapshots"] + info["children"] if d not in owned]
            if foreign:
                other = self.client.vvol(foreign[0])
                raise InUse(
                    kind="VM",
                    ref=name,
                    reason=f"vvol {info['name']} is still used by {other['name'] or other['id']}",
                )
        dom.undefine()
        delete_all(self.client, list(owned))

    def extend_disk(
        self, name: str, target: str, size: str, fix_gpt: bool = False
    ) -> dict[str, Any]:
        """Grow a disk's vvol; a running guest sees the new size at once (block
        resize).  ``fix_gpt`` (VM stopped) moves the GPT backup header to the new end."""
        dom = self.domain(name)
        root, meta = self._meta(dom)
        vvol = meta.disks.get(target)
        if vvol is None:
            raise InvalidInput(detail=f"VM {name} has no disk {target}")
        nbytes = parse_size(size)
        running = bool(dom.isActive())
        if running and fix_gpt:
            raise InUse(kind="VM", ref=name, reason="it is running; --fix-gpt needs it stopped")
        if meta.layers.get(target):
            raise InvalidInput(
                detail=f"disk {target} of {name} is a redo chain; delete its snapshots first"
            )
        if running:
            live = dx.disk_source(dx.parse(dom.XMLDesc(0)), target) or {}
            why = hd.no_online_resize(live)
            if why:
                raise InUse(
                    kind="VM",
                    ref=name,
                    reason=f"disk {target} is reached over {why}; stop the VM first",
                )
        info = self.client.vvol_extend(vvol, nbytes)
        if running:
            try:
                dom.blockResize(target, nbytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            except libvirt.libvirtError as exc:
                raise VmError(
                    detail=f"vvol {vvol} is now {nbytes} bytes but the running VM did not "
                    f"take the new size ({exc.get_error_message()}); it will after a restart"
                ) from None
        result: dict[str, Any] = {"vm": name, "target": target, "vvol": vvol, "size": info["size"]}
        if fix_gpt:
            result["gpt"] = gpt.fix_gpt(
                lambda offset, length: self.client.vvol_read(vvol, offset, length),
                lambda offset, data: self.client.vvol_write(vvol, offset, data),
                int(info["size"]),
                f"vvol {vvol}",
            )
        return result

    def refresh(self, name: str) -> dict[str, Any]:
        """Rewrite the definition's disk sources to where the vvols bind now (for a
        running VM: through the endpoint it runs on, which a migration may have changed)."""
        dom = self.domain(name)
        root, meta = self._meta(dom)
        live = dx.meta(dx.parse(dom.XMLDesc(0))) if dom.isActive() else None
        if live is not None and live.pe != meta.pe:
            meta = replace(meta, pe=live.pe)
            dx.set_meta(root, meta)
        self._point_sources(root, meta)
        self.conn.defineXML(dx.tostring(root))
        self._save(meta, root, name)
        return self.show(name)

    def register(self, config_vvol: str) -> dict[str, Any]:
        """Define the VM on this host from its config vvol alone."""
        doc = self.client.config_get(config_vvol)
        name = str(doc["name"])
        try:
            self.conn.lookupByName(name)
            raise AlreadyExists(kind="VM", ref=name)
        except libvirt.libvirtError:
            pass
        root = dx.parse(str(doc["xml"]))
        meta = dx.meta(root)
        if meta is None:
            raise InvalidInput(detail=f"config vvol {config_vvol} holds no vvhost VM")
        self._point_sources(root, meta)
        self.conn.defineXML(dx.tostring(root))
        self._save(meta, root, name)
        return self.show(name)


def _image_mib(image: str) -> int:
    try:
        size = qemuimg.virtual_size(image)
    except qemuimg.QemuImgFailed as exc:
        raise InvalidInput(detail=f"cannot read image {image}: {exc.fields['detail']}") from None
    return max(1, math.ceil(size / MiB))


def raw_target(handle: dict[str, Any]) -> list[str]:
    """``qemu-img convert -n`` arguments that write raw into a binding."""
    return hd.of(handle).image_args(target=True)


def raw_source(handle: dict[str, Any]) -> list[str]:
    """``qemu-img`` arguments that read a binding as raw."""
    return hd.of(handle).image_args()


def delete_all(client: Client, vvols: list[str]) -> None:
    """Delete vvols that may hang from each other: dependants (snapshots, linked
    clones) before what they hang from; vvols already gone are skipped."""
    left: dict[str, dict[str, Any]] = {}
    for vid in vvols:
        with contextlib.suppress(NotFound):
            left[vid] = client.vvol(vid)
    while left:
        free = [v for v, i in left.items() if not set(i["snapshots"] + i["children"]) & set(left)]
        if not free:
            raise VmError(detail="the vvols to delete depend on each other in a cycle")
        for vid in free:
            client.vvol_delete(vid)
            del left[vid]
