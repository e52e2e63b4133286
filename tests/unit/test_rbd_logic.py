"""Pure logic of the RBD array: names, range arithmetic, index records."""

from __future__ import annotations

import pytest

from vvhost.arrays import (
    rbdindex,
    rbdnames,
    rbdranges,
)
from vvhost.errors import InvalidInput


def test_names_are_deterministic_and_safe() -> None:
    assert rbdnames.image("v1") == "vv-v1"
    assert rbdnames.snap("s1") == "vs-s1"
    assert rbdnames.clone_point("c1") == "vc-c1"
    assert rbdnames.staged("v1", "op7") == "vv-v1.r-op7"
    assert rbdnames.namespace("") == "" and rbdnames.namespace("tenant-a") == "tenant-a"
    assert rbdnames.ours("vv-x") and not rbdnames.ours("someone-elses")
    for bad in ("a/b", "a@b", "", "..", "x..y", "-lead", "x" * 97, "sp ace"):
        with pytest.raises(InvalidInput):
            rbdnames.image(bad)


def test_merge_align_intersect() -> None:
    assert rbdranges.merge([(5, 10), (0, 10), (40, 1), (20, 0), (15, 5)]) == [(0, 20), (40, 1)]
    assert rbdranges.align([(0, 10), (5, 10), (40, 1)], 16, 45) == [(0, 16), (32, 13)]
    assert rbdranges.align([(17, 1)], 16, 1000) == [(16, 16)]
    assert rbdranges.intersect([(0, 10), (20, 10)], [(5, 20)]) == [(5, 5), (20, 5)]
    assert rbdranges.intersect([(0, 10)], [(10, 10)]) == []
    assert rbdranges.total([(0, 10), (5, 10)]) == 15
    assert list(rbdranges.blocks([(0, 10)], 4)) == [(0, 4), (4, 4), (8, 2)]
    with pytest.raises(ValueError):
        rbdranges.align([(0, 1)], 0, 10)


def test_index_records_round_trip() -> None:
    cut = rbdindex.Image("c1", "vv-src", "abc")
    entry = rbdindex.Entry("image", "c1", "vv-x", "123", chain=["p1"], clone_of=cut)
    again = rbdindex.decode_entry(rbdindex.encode(entry))
    assert again == entry and again.clone_of == cut and not again.ready
    assert rbdindex.decode_image(rbdindex.encode(cut)) == cut
    snap = rbdindex.Entry("snap", "c1", "vv-x", "123", "vs-s", state="ready")
    assert rbdindex.users({"x": entry, "s": snap, "y": cut}, "123") == ["s", "x"]
    assert rbdindex.vvol_key("x") == "vvol:x" and rbdindex.staged_key("x", "o") == "staged:x:o"


def test_a_moved_image_is_renamed_in_every_record() -> None:
    from vvhost.arrays import rbdmove

    new = rbdindex.Image("b", "vv-x", "new")
    head = rbdindex.Entry("image", "a", "vv-x", "old", state="ready")
    snap = rbdindex.Entry("snap", "a", "vv-x", "old", "vs-s", state="ready")
    clone = rbdindex.Entry("image", "a", "vv-c", "cc", clone_of=rbdindex.Image("a", "vv-x", "old"))
    other = rbdindex.Entry("image", "a", "vv-y", "yy")
    assert rbdmove.moved_entry(head, "old", new).ref() == new
    moved = rbdmove.moved_entry(snap, "old", new)
    assert moved.ref() == new and moved.snap == "vs-s" and moved.ready
    moved = rbdmove.moved_entry(clone, "old", new)
    assert moved.clone_of == new and moved.ref() == clone.ref()
    assert rbdmove.moved_entry(other, "old", new) == other
