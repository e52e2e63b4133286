"""Typed data sources: where a daemon or a host finds one vvol's data.

A backend hands out a source (``ArrayBackend.source``); endpoints build their
block node, LUN or link from it and never guess from a path.  Sources travel
as plain dicts (``to_dict``/``from_dict``) between the control plane and the
endpoint daemons it drives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InvalidInput


@dataclass(frozen=True)
class FileSource:
    """A raw file on the control plane's machine (``dir`` arrays)."""

    path: str
    kind: str = "file"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        return self.path


@dataclass(frozen=True)
class RbdSource:
    """An RBD image (or one of its snapshots) in a pool and RADOS namespace."""

    pool: str
    namespace: str
    image: str
    snap: str | None = None
    conf: str | None = None  # ceph.conf of the cluster (None: the default one)
    user: str | None = None  # client id without "client." (None: admin)
    keyring: str | None = None
    kind: str = "rbd"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        """``pool/namespace/image@snap``, as ``rbd`` prints it."""
        spec = (
            f"{self.pool}/{self.namespace}/{self.image}"
            if self.namespace
            else (f"{self.pool}/{self.image}")
        )
        return f"{spec}@{self.snap}" if self.snap else spec


DataSource = FileSource | RbdSource

_KINDS: dict[str, type[FileSource] | type[RbdSource]] = {"file": FileSource, "rbd": RbdSource}


def from_dict(data: dict[str, Any]) -> DataSource:
    kind = data.get("kind")
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise InvalidInput(detail=f"unknown data source kind {kind!r}")
    fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
    return cls(**fields)


def file_path(source: DataSource, who: str) -> str:
    """The path of a file source; anything else is refused for ``who`` (one line)."""
    if isinstance(source, FileSource):
        return source.path
    raise InvalidInput(detail=f"{who} serves files only, not {source.kind} data ({source.label()})")
