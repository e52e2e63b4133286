"""Answers about the server itself: health, operations, the audit and events."""

from __future__ import annotations

from typing import Any

from .common import Out, Strict


class HealthOut(Strict):
    ok: bool
    version: str
    recovered: Any
    caller: str


class ReplicaOut(Out):
    """A control-plane replica sharing the catalog (PostgreSQL)."""

    id: str
    node: str
    url: str | None = None
    started: float
    heartbeat: float
    epoch: int
    lease_left: float  # seconds; negative once expired
    state: str  # live | fenced
    me: bool  # the replica that answered


class OperationOut(Strict):
    id: str
    op: str | None = None
    step: str | None = None
    done: int
    total: int


class AuditOut(Out):
    ok: bool
    problems: list[Any]


class AuditFixOut(AuditOut):
    repairs: list[Any]
    resolved: list[Any]


class EventOut(Strict):
    id: int
    kind: str
    message: str
    severity: str
    subject: str
    fields: dict[str, Any]
    tenant: str | None = None
    time: float


class EventsOut(Strict):
    """Events after the cursor, oldest first, and the cursor to pass next."""

    events: list[EventOut]
    cursor: int


class VmEventOut(Strict):
    event: int | None = None
    recorded: bool


class HealthItem(Strict):
    kind: str
    name: str
    status: str
    detail: str
    advice: str = ""
    figures: dict[str, Any]


class HealthReport(Strict):
    status: str
    items: list[HealthItem]
    time: float
