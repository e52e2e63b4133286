"""The VM document's snapshot tree, and disk chains in domain XML."""

from __future__ import annotations

from vvhost.host import domainxml as dx
from vvhost.host.vmdoc import Point, VmDoc, tree_lines

ISCSI = {
    "protocol": "iscsi",
    "portal": "127.0.0.1:3260",
    "target": "iqn.x:pe.h1",
    "lun": 3,
    "initiator": "iqn.2026-11.test:h1",
    "uri": "iscsi://127.0.0.1:3260/iqn.x:pe.h1/3",
}


def doc_with(*points: tuple[str, str | None], current: str | None) -> VmDoc:
    doc = VmDoc(config="c", name="vm1", xml="", disks={"vda": "v"})
    for i, (name, parent) in enumerate(points):
        doc.add(Point(name=name, parent=parent, mode="cow", created=1000.0 + i))
    doc.current = current
    return doc


def test_tree_draws_branches_and_the_live_state() -> None:
    doc = doc_with(("s1", None), ("s2", "s1"), ("s3", "s1"), current="s3")
    lines = tree_lines(doc)
    assert lines[0] == "vm1"
    assert lines[1].startswith("└── s1")
    assert lines[2].startswith("    ├── s2")
    assert lines[3].startswith("    └── s3")
    assert lines[4] == "        └── now"


def test_remove_rehangs_children_and_moves_current() -> None:
    doc = doc_with(("s1", None), ("s2", "s1"), ("s3", "s2"), current="s2")
    doc.remove("s2")
    assert doc.point("s3").parent == "s1" and doc.current == "s1"
    assert [p.name for p in doc.children("s1")] == ["s3"]


def test_chain_in_domain_xml_round_trips() -> None:
    top, mid, base = (dict(ISCSI, lun=n) for n in (3, 2, 1))
    meta = dx.VmMeta(
        datastore=None, config="cfg", disks={"vda": "v3"}, layers={"vda": ["v1", "v2"]}
    )
    root = dx.new_domain("vm1", 128, 1, meta)
    handles = {"v1": base, "v2": mid, "v3": top}
    dx.point_sources(root, meta, handles)
    again = dx.parse(dx.tostring(root))
    assert dx.meta(again) == meta and meta.all_vvols() == ["v1", "v2", "v3"]
    assert dx.check_sources(again, meta, handles) is None
    assert [s["name"] for s in dx.chain_sources(again, "vda") or []] == [
        "iqn.x:pe.h1/3",
        "iqn.x:pe.h1/2",
        "iqn.x:pe.h1/1",
    ]
    assert again.find("devices/disk/driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert dx.check_sources(again, meta, {**handles, "v2": dict(ISCSI, lun=9)}) == "vda"
    dx.set_source(again, "vda", top)  # back to one raw disk
    assert again.find("devices/disk/backingStore") is None
    assert again.find("devices/disk/driver").get("type") == "raw"  # type: ignore[union-attr]
