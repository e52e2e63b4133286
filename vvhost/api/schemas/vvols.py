"""Answers about vvols, snapshot groups, their data and datastores."""

from __future__ import annotations

from typing import Any

from .common import Out, Strict


class VvolOut(Out):
    """A vvol as listed.  A host is never shown ``path``, ``where`` or ``locator``."""

    id: str
    name: str | None = None
    type: str
    container: str
    size: int
    parent: str | None = None
    relation: str | None = None
    readonly: bool
    state: str
    failure: str | None = None
    generation: int
    datastore: str | None = None
    tenant: str | None = None
    created: float
    provisioned: int | None = None
    allocated: int | None = None
    unique: int | None = None
    charge: int | None = None
    held: int | None = None


class VvolDetail(VvolOut):
    container_id: str
    array: str
    array_id: str
    used: int | None = None
    snapshots: list[str]
    children: list[str]
    refs: int
    op: str | None = None
    metadata: dict[str, str]
    problem: str | None = None
    background: Any = None
    where: str | None = None
    path: str | None = None
    locator: dict[str, Any] | None = None


class SnapshotPrepared(Out):
    id: str
    name: str | None = None
    base: str
    op: str | None = None


class SnapshotCut(Out):
    id: str
    name: str | None = None
    base: str
    state: str


class BitmapOut(Out):
    vvol: str
    base: str | None = None
    chunk: int
    method: str
    size: int
    bytes: int
    ranges: list[list[int]]


class WriteOut(Strict):
    vvol: str
    offset: int
    bytes: int


class CopyDiffsOut(Out):
    bytes: int
    ranges: int
    method: str


class ConfigOut(Strict):
    vvol: str
    document: dict[str, Any]
    generation: int


class ConfigStored(Strict):
    vvol: str
    bytes: int
    generation: int


class DatastoreOut(Out):
    id: str
    name: str
    capacity: int
    tenant: str | None = None
    containers: list[str]
    created: float
    container_names: list[str]
    arrays: list[str]
    provisioned: int
    free: int
    vvols: int


class ResolvedContainer(Out):
    id: str
    name: str
    arrays: list[str]


class ResolvedArray(Out):
    id: str
    name: str
    backend: str
    path: str | None = None


class ResolvedPe(Out):
    name: str
    protocol: str
    portal: str | None = None
    path: str | None = None
    arrays: list[str]


class DatastoreResolved(Out):
    datastore: str
    name: str
    host: str
    capacity: int
    containers: list[ResolvedContainer]
    arrays: list[ResolvedArray]
    pes: list[ResolvedPe]
