"""The base of every answer, the error body and the page of a listing.

Answers declare the fields callers rely on, with their types; a record may carry
more (a backend's or protocol's own details), which pass through unchanged.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class Out(BaseModel):
    """An answer: declared fields are checked, further ones are kept as they are."""

    model_config = ConfigDict(extra="allow")


class Strict(BaseModel):
    """An answer whose fields are all declared."""

    model_config = ConfigDict(extra="forbid")


class ErrorOut(Strict):
    """Every error: a stable code, one line for people and the fields it names."""

    code: str
    message: str
    fields: dict[str, Any] = Field(default_factory=dict)


T = TypeVar("T")


class Page(Strict, Generic[T]):
    """One page of a listing, oldest key first; ``next`` is the cursor of the
    following page, null on the last one."""

    items: list[T]
    next: str | None


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": what}
    for status, what in (
        (400, "invalid input"),
        (401, "no or a bad token"),
        (403, "not allowed"),
        (404, "not found (or not visible to the caller)"),
        (409, "conflict: in use, already exists, stale generation, busy"),
        (413, "request body too large"),
        (422, "stored data is corrupt"),
        (500, "internal error"),
        (502, "a backend or endpoint failed"),
        (503, "unavailable: an array or daemon is offline"),
        (507, "out of space"),
    )
}
