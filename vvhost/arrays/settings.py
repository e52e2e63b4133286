"""Per-backend array settings: a typed record each, stored as JSON in the catalog."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidInput


@dataclass(frozen=True)
class DirSettings:
    path: str  # the directory holding vvols/ and the .vvhost-array marker

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def where(self) -> str:
        return self.path


@dataclass(frozen=True)
class RbdSettings:
    pool: str
    conf: str | None = None  # ceph.conf (None: /etc/ceph/ceph.conf)
    user: str | None = None  # client id the control plane uses, without "client."
    keyring: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def where(self) -> str:
        return f"rbd:{self.pool}"


ArraySettings = DirSettings | RbdSettings


def parse(cls: type[DirSettings] | type[RbdSettings], data: dict[str, Any]) -> ArraySettings:
    """Build ``cls`` from a dict, refusing unknown or missing fields in one line."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(detail=f"unknown array setting(s): {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise InvalidInput(detail=f"array settings: {exc}") from None
