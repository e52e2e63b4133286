"""Domain XML for VMs on vvols, and reading it back safely.

vvhost's own data lives in the domain's ``<metadata>``::

    <metadata>
      <vvhost:vm xmlns:vvhost="https://vvhost.org/xmlns/vm/1" datastore="naa.6..."
                 config="CONFIG-VVOL-ID" pe="ENDPOINT">
        <vvhost:disk target="vda" vvol="VVOL-ID"/>
      </vvhost:vm>
    </metadata>

and each disk's ``<source>`` is the binding handle of its vvol on this host:
an iSCSI LUN (``protocol='iscsi'``), an NBD export (unix socket or TCP) or a file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput

NS = "https://vvhost.org/xmlns/vm/1"
MAX_XML = 1 << 20
ET.register_namespace("vvhost", NS)


@dataclass(frozen=True)
class VmMeta:
    datastore: str | None
    config: str | None
    disks: dict[str, str]  # target -> vvol id
    pe: str | None = None  # the endpoint this VM's disks are bound through


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
    disks = {d.get("target", ""): d.get("vvol", "") for d in vm.findall(f"{{{NS}}}disk")}
    return VmMeta(
        datastore=vm.get("datastore"), config=vm.get("config"), disks=disks, pe=vm.get("pe")
    )


def disk_source(root: ET.Element, target: str) -> dict[str, str] | None:
    """What the domain says disk ``target`` opens, in the shape of ``source_of``;
    None when there is no such disk."""
    for disk in root.findall("devices/disk"):
        t = disk.find("target")
        if t is None or t.get("dev") != target:
            continue
        src = disk.find("source")
        if src is None:
            return {}
        if disk.get("type") == "file":
            return {"file": src.get("file", "")}
        out = {"protocol": src.get("protocol", ""), "name": src.get("name", "")}
        host = src.find("host")
        if host is not None:
            out.update(
                host_name=host.get("name", ""),
                port=host.get("port", ""),
                transport=host.get("transport", ""),
                socket=host.get("socket", ""),
            )
        return _normal(out)
    return None


def source_of(handle: dict[str, Any]) -> dict[str, str]:
    """The disk source a binding handle stands for (to compare with the XML)."""
    proto = handle["protocol"]
    if proto == "file":
        return {"file": handle["path"]}
    if proto == "iscsi":
        host, _, port = handle["portal"].rpartition(":")
        return {
            "protocol": "iscsi",
            "name": f"{handle['target']}/{handle['lun']}",
            "host_name": host,
            "port": port,
        }
    if handle.get("socket"):
        return {
            "protocol": "nbd",
            "name": handle["export"],
            "transport": "unix",
            "socket": handle["socket"],
        }
    host, _, port = str(handle["uri"])[len("nbd://") :].split("/")[0].rpartition(":")
    return {"protocol": "nbd", "name": handle["export"], "host_name": host, "port": port}


def same_source(xml_source: dict[str, str] | None, handle: dict[str, Any]) -> bool:
    return xml_source is not None and _normal(xml_source) == _normal(source_of(handle))


def _normal(src: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in src.items() if v}


def set_source(root: ET.Element, target: str, handle: dict[str, Any]) -> None:
    """Point disk ``target`` at the binding ``handle`` (rewrites type and source)."""
    for disk in root.findall("devices/disk"):
        t = disk.find("target")
        if t is None or t.get("dev") != target:
            continue
        old = disk.find("source")
        if old is not None:
            disk.remove(old)
        src = ET.Element("source")
        proto = handle["protocol"]
        if proto == "file":
            disk.set("type", "file")
            src.set("file", handle["path"])
        else:
            disk.set("type", "network")
            s = source_of(handle)
            src.set("protocol", s["protocol"])
            src.set("name", s["name"])
            host = ET.SubElement(src, "host")
            if s.get("transport") == "unix":
                host.set("transport", "unix")
                host.set("socket", s["socket"])
            else:
                host.set("name", s["host_name"])
                host.set("port", s["port"])
            if proto == "iscsi" and handle.get("initiator"):
                ini = ET.SubElement(src, "initiator")
                ET.SubElement(ini, "iqn").set("name", handle["initiator"])
        disk.insert(1, src)
        return
    raise InvalidInput(detail=f"the domain has no disk {target}")


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
    md = ET.SubElement(root, "metadata")
    vm = ET.SubElement(md, f"{{{NS}}}vm")
    if vm_meta.datastore:
        vm.set("datastore", vm_meta.datastore)
    if vm_meta.config:
        vm.set("config", vm_meta.config)
    if vm_meta.pe:
        vm.set("pe", vm_meta.pe)
    for target, vvol in vm_meta.disks.items():
        ET.SubElement(vm, f"{{{NS}}}disk", target=target, vvol=vvol)
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
        ET.SubElement(disk, "driver", name="qemu", type="raw", cache="none", io="native")
        ET.SubElement(disk, "target", dev=target, bus="virtio")
    if serial_log:
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=serial_log)
        ET.SubElement(serial, "target", port="0")
    else:
        ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(devices, "memballoon", model="none")
    return root
