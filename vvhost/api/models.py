"""Request bodies.  Unknown fields are refused; sizes stay strings or ints so the
service parses them with the same rules as the CLI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Size = str | int
Ref = str
MAX_INT = (1 << 63) - 1  # the catalog's integers are signed 64-bit


def _generation() -> Any:
    return Field(default=None, ge=0, le=MAX_INT)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArrayCreate(Body):
    name: str = Field(max_length=128)
    backend: str = Field(default="dir", max_length=32)
    settings: dict[str, str] = Field(default_factory=dict, max_length=16)


class ContainerCreate(Body):
    name: str = Field(max_length=128)
    capacity: Size
    arrays: list[str] | None = Field(default=None, max_length=64)
    tenant: str | None = Field(default=None, max_length=128)
    overcommit: str | float = 1.0
    reserve: str | None = Field(default=None, max_length=32)
    alerts: str | None = Field(default=None, max_length=32)


class ContainerSet(Body):
    capacity: Size | None = None
    overcommit: str | float | None = None
    reserve: str | None = Field(default=None, max_length=32)
    alerts: str | None = Field(default=None, max_length=32)


class VvolCreate(Body):
    container: Ref | None = Field(default=None, max_length=128)
    datastore: Ref | None = Field(default=None, max_length=128)
    tenant: str | None = Field(default=None, max_length=128)
    pe: Ref | None = Field(default=None, max_length=128)  # only arrays this endpoint serves
    size: Size
    type: str = Field(default="data", max_length=16)
    name: str | None = Field(default=None, max_length=128)
    metadata: dict[str, str] | None = None
    op_id: str | None = Field(default=None, max_length=64)


class Extend(Body):
    size: Size
    generation: int | None = _generation()


class Snapshot(Body):
    name: str | None = Field(default=None, max_length=128)
    op_id: str | None = Field(default=None, max_length=64)


class SnapshotGroup(Body):
    vvols: list[Ref] = Field(min_length=1, max_length=256)
    names: list[str | None] = Field(min_length=1, max_length=256)


class SnapshotIds(Body):
    snapshots: list[Ref] = Field(min_length=1, max_length=256)


class Clone(Body):
    linked: bool = False
    container: Ref | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=128)
    op_id: str | None = Field(default=None, max_length=64)


class Revert(Body):
    to: Ref = Field(max_length=128)
    generation: int | None = _generation()
    op_id: str | None = Field(default=None, max_length=64)


class Move(Body):
    container: Ref = Field(max_length=128)
    op_id: str | None = Field(default=None, max_length=64)


class Meta(Body):
    pairs: list[str] = Field(max_length=256)
    generation: int | None = _generation()


class CopyDiffs(Body):
    base: Ref = Field(max_length=128)
    to: Ref = Field(max_length=128)
    op_id: str | None = Field(default=None, max_length=64)


class HostAdd(Body):
    name: str = Field(max_length=128)
    iqn: str | None = Field(default=None, max_length=256)
    tenant: str | None = Field(default=None, max_length=128)


class PeCreate(Body):
    name: str = Field(max_length=128)
    protocol: str = Field(max_length=16)
    array: str | None = Field(default=None, max_length=128)
    portal: str | None = Field(default=None, max_length=300)
    path: str | None = Field(default=None, max_length=4096)
    node: str | None = Field(default=None, max_length=128)


class PeEvacuate(Body):
    to: str = Field(max_length=128)


class Bind(Body):
    vvols: list[Ref] = Field(min_length=1, max_length=1024)
    host: str = Field(max_length=128)
    pe: str | None = Field(default=None, max_length=128)
    shared: bool = False


class Unbind(Body):
    vvols: list[Ref] = Field(min_length=1, max_length=1024)
    host: str = Field(max_length=128)
    all: bool = False


class Rebind(Body):
    host: str = Field(max_length=128)
    pe: str = Field(max_length=128)


class TenantCreate(Body):
    name: str = Field(max_length=128)


class TokenCreate(Body):
    name: str = Field(default="admin", max_length=128)


class DatastoreCreate(Body):
    name: str = Field(max_length=128)
    capacity: Size
    containers: list[Ref] | None = Field(default=None, max_length=64)
    tenant: str | None = Field(default=None, max_length=128)


class DatastoreExtend(Body):
    capacity: Size


class ConfigDocument(Body):
    document: dict[str, Any]
    generation: int | None = None  # compare-and-set: the generation the document was read at
