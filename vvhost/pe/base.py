"""What every protocol endpoint implements.

An endpoint presents *attachments*: one per binding, named by a key unique
within the endpoint.  Attach and detach are idempotent; ``present`` tells what
the daemon really has, so the control plane can reconcile it with the catalog
after a restart of either side.
"""

from __future__ import annotations

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
    initiator: str | None = None  # iSCSI initiator name allowed in; None opens the target to all


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


def attach_each(ep: Endpoint, atts: list[Attachment]) -> dict[str, VvhostError]:
    """``attach_many`` for endpoints with nothing better than one at a time."""
    failed: dict[str, VvhostError] = {}
    for a in atts:
        try:
            ep.attach(a)
        except VvhostError as exc:
            failed[a.key] = exc
    return failed
