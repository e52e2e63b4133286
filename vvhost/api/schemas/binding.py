"""Answers about bindings (a host's handle to a vvol) and per-VM leases."""

from __future__ import annotations

from typing import Any

from .common import Out, Strict


class HandleOut(Out):
    """What a host needs to open a bound vvol; the protocol adds its own fields
    (iSCSI target and LUN, NBD export, file path, RBD image and identity)."""

    vvol: str
    host: str
    pe: str
    protocol: str
    secondary_id: Any = None
    refcount: int
    readonly: bool
    shared: bool
    state: str


class BindError(Strict):
    code: str
    message: str


class BindResult(Strict):
    """One vvol of a bind or unbind batch: its handle, or why it failed."""

    vvol: str
    ok: bool
    handle: HandleOut | None = None
    error: BindError | None = None


class UnbindResult(Out):
    vvol: str
    ok: bool
    error: BindError | None = None


class LeaseOut(Out):
    """A lease taken or renewed; ``token`` (on taking) renews and releases it."""

    vvol: str
    tenant: str | None = None
    host: str
    op: str
    pid: int
    since: float
    since_utc: str
    expires: float
    expires_in: float
    epoch: int
    token: str | None = None
    taken_over: dict[str, Any] | None = None


class LeaseReleased(Strict):
    vvol: str
    released: bool


class LeaseShown(Strict):
    vvol: str
    lease: dict[str, Any] | None = None
