"""Cursor paging of listings (vvhost/api/paging.py)."""

from __future__ import annotations

import pytest

from vvhost.api.paging import BY_CREATION, BY_NAME, decode, encode, page
from vvhost.errors import InvalidInput

ROWS = [{"id": f"id{i}", "created": 100.0 + (i % 3), "name": f"n{9 - i}"} for i in range(9)]


def _walk(rows: list[dict[str, object]], limit: int) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        got = page(rows, BY_CREATION, limit, cursor)
        pages.append([str(r["id"]) for r in got["items"]])
        cursor = got["next"]
        if cursor is None:
            return pages


def test_pages_cover_the_listing_once_in_key_order() -> None:
    whole = [str(r["id"]) for r in sorted(ROWS, key=BY_CREATION)]
    assert whole[:3] == ["id0", "id3", "id6"]  # created first, then id
    for limit in (1, 2, 4, 9, 50):
        pages = _walk(ROWS, limit)
        assert [i for p in pages for i in p] == whole
        assert all(0 < len(p) <= limit for p in pages)
    assert _walk(ROWS, 9) == [whole] and _walk([], 5) == [[]]


def test_a_cursor_survives_rows_going_and_coming() -> None:
    first = page(ROWS, BY_NAME, 4, None)
    assert [r["name"] for r in first["items"]] == ["n1", "n2", "n3", "n4"]
    changed = [r for r in ROWS if r["name"] != "n5"] + [{"id": "x", "created": 0.0, "name": "n0"}]
    rest = page(changed, BY_NAME, 10, first["next"])
    assert [r["name"] for r in rest["items"]] == ["n6", "n7", "n8", "n9"]
    assert rest["next"] is None
    assert page([], BY_NAME, 10, first["next"]) == {"items": [], "next": None}


def test_cursors_are_opaque_and_checked() -> None:
    key = (101.5, "abc")
    assert decode(encode(key), (1.0, "x")) == key
    for bad in ("", "!!!", "bm90IGpzb24", encode(("only-one",)), encode((1, 2))):
        with pytest.raises(InvalidInput, match="cursor"):
            decode(bad, (1.0, "x"))
    with pytest.raises(InvalidInput, match="cursor"):  # a name cursor on a creation listing
        page(ROWS, BY_CREATION, 5, page(ROWS, BY_NAME, 1, None)["next"])
