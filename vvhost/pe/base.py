"""What every protocol endpoint implements.

An endpoint presents *attachments*: one per binding, named by a key unique
within the endpoint.  Attach and detach are idempotent; ``present`` tells what
the daemon really has, so the control plane can reconcile it with the catalog
after a restart of either side.

Daemons learn a vvol's size when they open its data; after the vvol grew,
``refresh`` makes them present the new size under the same key (LUN number,
export name, identity), and ``stale`` tells which attachments still show an
old one (after a crash between growing the data and refreshing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import VvhostError


@dataclass(frozen=True)
class Attachment:
    key: str  # unique within the endpoint (iSCSI: "TID/LUN"; NBD: export name; file: file name)
    secondary_id: str  # what the host uses: LUN number, export name, file name
    path: str  # the vvol's data
    readonly: bool
    vvol: str
    tid: int | None = None  # iSCSI target
    target_iqn: str | None = None
    initiator: str | None = None  # iSCSI initiator name allowed in (None: see ``shared``)
    shared: bool = False  # iSCSI: the target is open to all initiators; else only ``initiator``
    host: str | None = None  # the host the binding is for (NBD over TLS: whose daemon)


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
        """Present the current size of ``a.path`` (the vvol grew); a no-op when the
        size presented is already current. Nothing else about ``a`` changes."""

    def stale(self, atts: list[Attachment]) -> list[str]:
        """Keys of the attachments in ``atts`` presented with an outdated size."""


def data_size(path: str) -> int:
    """The size of a vvol's data as a daemon opening it now would see it."""
    return os.path.getsize(path)


def attach_each(ep: Endpoint, atts: list[Attachment]) -> dict[str, VvhostError]:
    """``attach_many`` for endpoints with nothing better than one at a time."""
    failed: dict[str, VvhostError] = {}
    for a in atts:
        try:
            ep.attach(a)
        except VvhostError as exc:
            failed[a.key] = exc
    return failed
