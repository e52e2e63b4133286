"""Cursor paging of listing routes: ``?limit=N&cursor=C`` answers
``{"items": [...], "next": C2 | null}``.  Items are ordered by a key of the
listing (creation time then id, or a name); a cursor is the opaque form of the
last key sent, so a page never repeats nor skips an item that stayed while the
caller paged."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import Query

from ..errors import InvalidInput

MAX_PAGE = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Cursor = Annotated[str | None, Query(max_length=512)]
Key = Callable[[Any], tuple[Any, ...]]
_BAD = "cursor: not a cursor this server gave out"


def encode(key: tuple[Any, ...]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode(cursor: str, like: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """The key in ``cursor``; it must have the shape of ``like`` (a key of this listing)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = tuple(json.loads(raw))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidInput(detail=_BAD) from None
    if like is None:  # nothing left to page through
        return key
    kinds = [float if isinstance(k, (int, float)) else type(k) for k in like]
    if len(key) != len(like) or not all(
        isinstance(k, (int, float)) if t is float else isinstance(k, t)
        for k, t in zip(key, kinds, strict=True)
    ):
        raise InvalidInput(detail=_BAD)
    return key


def fields(*names: str) -> Key:
    """The key made of these fields of a row."""
    return lambda row: tuple(row[n] for n in names)


BY_CREATION = fields("created", "id")
BY_NAME = fields("name")


def page_of(
    fetch: Callable[[Any, int], Sequence[Any]],
    key: Key,
    like: tuple[Any, ...],
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """As :func:`page`, the database doing the paging: ``fetch(after, n)`` gives
    at most ``n`` rows in key order whose key is above ``after`` (None: from the
    first); ``like`` is a key of the listing's shape, to check a cursor against."""
    after = decode(cursor, like) if cursor is not None else None
    rows = fetch(after, limit + 1)
    items = rows[:limit]
    more = len(rows) > limit
    return {"items": list(items), "next": encode(key(items[-1])) if more and items else None}


def page(rows: Sequence[Any], key: Key, limit: int, cursor: str | None) -> dict[str, Any]:
    """The rows after ``cursor`` in key order, at most ``limit`` of them."""
    ordered = sorted(rows, key=key)
    if cursor is not None:
        after = decode(cursor, key(ordered[0]) if ordered else None)
        ordered = [r for r in ordered if key(r) > after]
    items = ordered[:limit]
    more = len(ordered) > limit
    return {"items": list(items), "next": encode(key(items[-1])) if more and items else None}
