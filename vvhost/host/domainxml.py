"""Domain XML for VMs on vvols, and reading it back safely.

vvhost's own data lives in the domain's ``<metadata>``::

    <metadata>
      <vvhost:vm xmlns:vvhost="https://vvhost.org/xmlns/vm/1" datastore="naa.6..."
                 config="CONFIG-VVOL-ID" pe="ENDPOINT">
        <vvhost:disk target="vda" vvol="VVOL-ID"/>
      </vvhost:vm>
    </metadata>

and each disk's ``<source>`` is the binding handle of its vvol on this host:
an iSCSI LUN, an NBD export (unix socket or TCP), an RBD image or a file. What a
protocol's source looks like is its handle class's business (host/handles/).
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from . import handles as hd
from .diskpolicy import apply_policy

NS = "https://vvhost.org/xmlns/vm/1"
MAX_XML = 1 << 20
ET.register_namespace("vvhost", NS)


@dataclass(frozen=True)
class VmMeta:
    datastore: str | None
    config: str | None
    disks: dict[str, str]  # target -> vvol id
    pe: str | None = None  # the endpoint this VM's disks are bound through
    # redo mode: target -> the backing layers under the disk's top vvol, bottom first
    layers: dict[str, list[str]] = field(default_factory=dict)

    def all_vvols(self) -> list[str]:
        """Every vvol the running domain opens: each disk's top and its layers."""
        out: list[str] = []
        for target, top in self.disks.items():
            out += self.layers.get(target, []) + [top]
        return out


def parse(xml: str) -> ET.Element:
    """Parse domain XML from an untrusted source: bounded size, no DTD (so no
    entity expansion), no external anything."""
    if len(xml) > MAX_XML:
        raise InvalidInput(detail=f"domain XML is larger than {MAX_XML} bytes")
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise InvalidInput(detail="domain XML with a DTD or entities is refused")
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InvalidInput(detail=f"domain XML does not parse: {exc}") from None


def has_vvhost(xml: str) -> bool:
    """Cheap test first: domains without vvhost metadata pass through untouched."""
    return NS in xml


def meta(root: ET.Element) -> VmMeta | None:
    vm = root.find(f"metadata/{{{NS}}}vm")
    if vm is None:
        return None
    disks, layers = {}, {}
    for d in vm.findall(f"{{{NS}}}disk"):
        target = d.get("target", "")
        disks[target] = d.get("vvol", "")
        chain = [el.get("vvol", "") for el in d.findall(f"{{{NS}}}layer")]
        if chain:
            layers[target] = chain
    return VmMeta(
        datastore=vm.get("datastore"),
        config=vm.get("config"),
        disks=disks,
        pe=vm.get("pe"),
        layers=layers,
    )


def set_meta(root: ET.Element, vm_meta: VmMeta) -> None:
    """Replace the domain's vvhost metadata."""
    md = root.find("metadata")
    if md is None:
        md = ET.SubElement(root, "metadata")
    for old in md.findall(f"{{{NS}}}vm"):
        md.remove(old)
    md.append(_meta_element(vm_meta))


def _meta_element(vm_meta: VmMeta) -> ET.Element:
    vm = ET.Element(f"{{{NS}}}vm")
    if vm_meta.datastore:
        vm.set("datastore", vm_meta.datastore)
    if vm_meta.config:
        vm.set("config", vm_meta.config)
    if vm_meta.pe:
        vm.set("pe", vm_meta.pe)
    for target, vvol in vm_meta.disks.items():
        disk = ET.SubElement(vm, f"{{{NS}}}disk", target=target, vvol=vvol)
        for layer in vm_meta.layers.get(target, []):
            ET.SubElement(disk, f"{{{NS}}}layer", vvol=layer)
    return vm


def _disk(root: ET.Element, target: str) -> ET.Element | None:
    for disk in root.findall("devices/disk"):
        t = disk.find("target")
        if t is not None and t.get("dev") == target:
            return disk
    return None


def _read_source(holder: ET.Element) -> dict[str, str]:
    """The source of a <disk> or <backingStore> element, in the shape of ``source_of``."""
    return hd.read_source(holder)


def disk_source(root: ET.Element, target: str) -> dict[str, str] | None:
    """What the domain says disk ``target`` opens (its top), in the shape of
    ``source_of``; None when there is no such disk."""
    disk = _disk(root, target)
    return None if disk is None else _read_source(disk)


def chain_sources(root: ET.Element, target: str) -> list[dict[str, str]] | None:
    """The sources of disk ``target``'s whole chain, top first (one entry for a
    plain disk); None when there is no such disk."""
    disk = _disk(root, target)
    if disk is None:
        return None
    out = [_read_source(disk)]
    store = disk.find("backingStore")
    while store is not None and store.find("source") is not None:
        out.append(_read_source(store))
        store = store.find("backingStore")
    return out


def same_chain(root: ET.Element, target: str, handles: list[dict[str, Any]]) -> bool:
    """Does disk ``target`` open exactly these bindings (top first)?"""
    have = chain_sources(root, target)
    return have is not None and [_normal(h) for h in have] == [
        _normal(source_of(h)) for h in handles
    ]


def source_of(handle: dict[str, Any]) -> dict[str, str]:
    """The disk source a binding handle stands for (to compare with the XML)."""
    return hd.of(handle).key()


def same_source(xml_source: dict[str, str] | None, handle: dict[str, Any]) -> bool:
    return hd.of(handle).same(xml_source)


def _normal(src: dict[str, str]) -> dict[str, str]:
    return hd.normal(src)


def set_source(root: ET.Element, target: str, handle: dict[str, Any]) -> None:
    """Point disk ``target`` at the binding ``handle`` (a plain raw disk)."""
    set_chain(root, target, [handle])


def set_chain(root: ET.Element, target: str, handles: list[dict[str, Any]]) -> None:
    """Point disk ``target`` at a chain of bindings, top first: one handle is a raw
    disk; more are qcow2 layers over a raw bottom, spelled out as <backingStore>
    so that no path written inside an image has to be right on this host."""
    disk = _disk(root, target)
    if disk is None:
        raise InvalidInput(detail=f"the domain has no disk {target}")
    for old in disk.findall("source") + disk.findall("backingStore"):
        disk.remove(old)
    driver = disk.find("driver")
    if driver is not None:
        driver.set("type", "qcow2" if len(handles) > 1 else "raw")
        apply_policy(driver)
    _fill(disk, handles[0])
    _set_readonly(disk, hd.of(handles[0]).readonly)
    _set_emulator(root, handles)
    holder = disk
    for i, handle in enumerate(handles[1:], start=1):
        store = ET.Element("backingStore")
        ET.SubElement(store, "format", type="raw" if i == len(handles) - 1 else "qcow2")
        _fill(store, handle)
        _place(holder, store)
        holder = store
    if len(handles) > 1:
        _place(holder, ET.Element("backingStore"))  # the chain ends here


def _place(holder: ET.Element, store: ET.Element) -> None:
    """<backingStore> goes right after <source>."""
    kids = list(holder)
    src = holder.find("source")
    holder.insert(kids.index(src) + 1 if src is not None else len(kids), store)


def _set_emulator(root: ET.Element, handles: list[dict[str, Any]]) -> None:
    """A disk libvirt cannot describe to the default QEMU names the wrapper that
    can open it (see host/qemuwrap.py); the domain keeps it afterwards."""
    wanted = {e for e in (hd.of(h).emulator() for h in handles) if e}
    if not wanted:
        return
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    emulator = devices.find("emulator")
    if emulator is None:
        emulator = ET.Element("emulator")
        devices.insert(0, emulator)
    emulator.text = sorted(wanted)[0]


def _set_readonly(disk: ET.Element, readonly: bool) -> None:
    """A disk on a read-only binding says so (``<readonly/>``); one on a writable
    binding does not."""
    for old in disk.findall("readonly"):
        disk.remove(old)
    if readonly:
        disk.append(ET.Element("readonly"))


def _fill(holder: ET.Element, handle: dict[str, Any]) -> None:
    """Give a <disk> or <backingStore> its type and <source> for ``handle``."""
    hd.of(handle).fill(holder)


def point_sources(root: ET.Element, vm: VmMeta, handles: dict[str, dict[str, Any]]) -> None:
    """Point every disk at its vvols' bindings (``handles``: vvol -> handle)."""
    for target, top in vm.disks.items():
        chain = [top] + list(reversed(vm.layers.get(target, [])))
        set_chain(root, target, [handles[v] for v in chain])


def copy_disk_sources(root: ET.Element, live: ET.Element, vm: VmMeta) -> None:
    """Give each disk of ``vm`` in ``root`` the driver and source chain the same disk
    has in ``live`` (a running domain whose sources were pointed already), and the
    emulator that opens them."""
    for target in vm.disks:
        mine, theirs = _disk(root, target), _disk(live, target)
        if mine is None or theirs is None:
            raise InvalidInput(detail=f"the domain has no disk {target}")
        for old in [e for e in mine if e.tag in _SOURCE_TAGS]:
            mine.remove(old)
        for i, new in enumerate(e for e in theirs if e.tag in _SOURCE_TAGS):
            mine.insert(i, copy.deepcopy(new))
    emulator, live_emulator = root.find("devices/emulator"), live.find("devices/emulator")
    if emulator is not None and live_emulator is not None:
        emulator.text = live_emulator.text


_SOURCE_TAGS = ("driver", "source", "backingStore")


def check_sources(root: ET.Element, vm: VmMeta, handles: dict[str, dict[str, Any]]) -> str | None:
    """The first disk whose definition does not open its vvols' bindings, or None."""
    for target, top in vm.disks.items():
        chain = [top] + list(reversed(vm.layers.get(target, [])))
        if not same_chain(root, target, [handles[v] for v in chain]):
            return target
    return None


def tostring(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def new_domain(
    name: str,
    memory_mib: int,
    vcpus: int,
    vm_meta: VmMeta,
    kernel: str | None = None,
    initrd: str | None = None,
    cmdline: str | None = None,
    serial_log: str | None = None,
) -> ET.Element:
    """A TCG domain (``type='qemu'``) with one virtio disk per vvol (sources set later)."""
    root = ET.Element("domain", type="qemu")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(root, "vcpu").text = str(vcpus)
    ET.SubElement(root, "metadata").append(_meta_element(vm_meta))
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    if kernel:
        ET.SubElement(os_el, "kernel").text = kernel
    if initrd:
        ET.SubElement(os_el, "initrd").text = initrd
    if cmdline:
        ET.SubElement(os_el, "cmdline").text = cmdline
    features = ET.SubElement(root, "features")  # without ACPI a guest cannot power off
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    devices = ET.SubElement(root, "devices")
    for target in vm_meta.disks:
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        driver = ET.SubElement(disk, "driver", name="qemu", type="raw", cache="none", io="native")
        apply_policy(driver)
        ET.SubElement(disk, "target", dev=target, bus="virtio")
    if serial_log:
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=serial_log)
        ET.SubElement(serial, "target", port="0")
    else:
        ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(devices, "memballoon", model="none")
    return root


def meta_xml(vm_meta: VmMeta) -> str:
    """The vvhost metadata element alone and without its namespace, which
    ``virDomainSetMetadata`` adds itself."""
    vm = _meta_element(vm_meta)
    for el in vm.iter():
        el.tag = el.tag.removeprefix(f"{{{NS}}}")
    return ET.tostring(vm, encoding="unicode")


def snapshot_xml(overlays: dict[str, dict[str, Any]]) -> str:
    """A disk-only external snapshot onto existing qcow2 overlays (target -> handle)."""
    snap = ET.Element("domainsnapshot")
    disks = ET.SubElement(snap, "disks")
    for target, handle in overlays.items():
        disk = ET.SubElement(disks, "disk", name=target, snapshot="external")
        ET.SubElement(disk, "driver", type="qcow2")
        _fill(disk, handle)
    return tostring(snap)


def chain_index(root: ET.Element, target: str, handle: dict[str, Any]) -> int | None:
    """The ``index`` a running domain's XML gives the chain element of disk ``target``
    that opens ``handle`` (for ``vda[N]`` in block jobs); None if it opens no such."""
    disk = _disk(root, target)
    if disk is None:
        return None
    holders: list[tuple[ET.Element, str | None]] = []
    src = disk.find("source")
    holders.append((disk, src.get("index") if src is not None else None))
    store = disk.find("backingStore")
    while store is not None and store.find("source") is not None:
        holders.append((store, store.get("index")))
        store = store.find("backingStore")
    for holder, index in holders:
        if index is not None and same_source(_read_source(holder), handle):
            return int(index)
    return None


def blockdev(handle: dict[str, Any]) -> dict[str, Any]:
    """The QEMU protocol node that opens a binding handle (its ``--object``s:
    ``handles.objects``)."""
    return hd.of(handle).blockdev()


def copy_dest_xml(handle: dict[str, Any]) -> str:
    """The ``<disk>`` a block copy writes to: the raw vvol behind binding ``handle``."""
    disk = ET.Element("disk", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw")
    _fill(disk, handle)
    return tostring(disk)


def mirror_of(root: ET.Element, target: str) -> tuple[str, dict[str, str]] | None:
    """A running domain's block copy of disk ``target``: its ``ready`` state (``yes``,
    ``pivot``, ``abort`` or empty while copying) and where it copies to; None when
    the disk has no such job."""
    disk = _disk(root, target)
    mirror = disk.find("mirror") if disk is not None else None
    if mirror is None:
        return None
    return mirror.get("ready", ""), _read_source(mirror)
