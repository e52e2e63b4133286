"""What every protocol endpoint implements.

An endpoint presents *attachments*: one per binding, named by a key unique
within the endpoint.  Attach and detach are idempotent; ``present`` tells what
the daemon really has, so the control plane can reconcile it with the catalog
after a restart of either side.

An attachment carries the vvol's typed data source (``FileSource`` or
``RbdSource``, see arrays/sources.py) and its size as the catalog knows it:
endpoints build their block node, LUN, link or handle from the source and
never stat or open vvol data to learn anything about it.

Daemons learn a vvol's size when they open its data; after the vvol grew,
``refresh`` makes them present the new size under the same key (LUN number,
export name, identity), and ``stale`` tells which attachments still show an
old one (after a crash between growing the data and refreshing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..arrays.sources import DataSource
from ..errors import VvhostError


@dataclass(frozen=True)
class Attachment:
    key: str  # unique within the endpoint (iSCSI: "TID/LUN"; NBD: export name; file: file name)
    secondary_id: str  # what the host uses: LUN number, export name, file name
    source: DataSource  # where the vvol's data is
    size: int  # the vvol's size in bytes (the catalog's)
    readonly: bool
    vvol: str
    tid: int | None = None  # iSCSI target
    target_iqn: str | None = None
    initiator: str | None = None  # iSCSI initiator name allowed in (None: see ``shared``)
    shared: bool = False  # iSCSI: the target is open to all initiators; else only ``initiator``
    host: str | None = None  # the host the binding is for (NBD over TLS: whose daemon)
    # iSCSI: the host's CHAP account (user, secret) its target asks for (None: no CHAP)
    chap: tuple[str, str] | None = field(default=None, repr=False)


class Endpoint(Protocol):
    protocol: str

    def start(self) -> None:
        """Start the daemon, or adopt one left running by an earlier control plane."""

    def stop(self) -> None: ...

    def alive(self) -> bool: ...

    def attach(self, a: Attachment) -> None: ...

    def attach_many(self, atts: list[Attachment]) -> dict[str, VvhostError]:
        """Attach a batch; returns the errors by key (the others are attached)."""

    def detach(self, key: str) -> None:
        """Stop presenting the attachment ``key`` (missing is fine)."""

    def present(self) -> set[str]:
        """Keys of the attachments the daemon serves right now."""

    def handle(self, a: Attachment) -> dict[str, Any]:
        """What a host needs to open the attachment: at least ``uri``."""

    def refresh(self, a: Attachment) -> None:
        """Present ``a.size`` (the vvol grew); a no-op when the size presented is
        already current. Nothing else about ``a`` changes."""

    def stale(self, atts: list[Attachment]) -> list[str]:
        """Keys of the attachments in ``atts`` presented with an outdated size."""


def attach_each(ep: Endpoint, atts: list[Attachment]) -> dict[str, VvhostError]:
    """``attach_many`` for endpoints with nothing better than one at a time."""
    failed: dict[str, VvhostError] = {}
    for a in atts:
        try:
            ep.attach(a)
        except VvhostError as exc:
            failed[a.key] = exc
    return failed
