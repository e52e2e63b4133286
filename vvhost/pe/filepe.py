"""The ``file`` endpoint: an NFS-like directory where each bound vvol appears as
a file named by its secondary id (a symbolic link to the vvol's data).

    PE_DIR/<vvol-id>.<host>   ->  ARRAY/vvols/<vvol-id>.raw
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..errors import VvhostError
from ..tools import EndpointError
from .base import Attachment, attach_each


class FileEndpoint:
    protocol = "file"

    def __init__(self, name: str, directory: str) -> None:
        self.name = name
        self.directory = directory

    def start(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise EndpointError(tool=f"file endpoint {self.name}", detail=str(exc)) from exc

    def stop(self) -> None:
        """Nothing runs: the files stay for as long as their bindings."""

    def alive(self) -> bool:
        return os.path.isdir(self.directory)

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key)

    def attach(self, a: Attachment) -> None:
        link = self._path(a.key)
        if os.path.islink(link) and os.readlink(link) == a.path:
            return
        tmp = link + ".tmp"
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(a.path, tmp)
            os.replace(tmp, link)
        except OSError as exc:
            raise EndpointError(tool=f"file endpoint {self.name}", detail=str(exc)) from exc

    def attach_many(self, atts: list[Attachment]) -> dict[str, VvhostError]:
        return attach_each(self, atts)

    def detach(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def present(self) -> set[str]:
        try:
            return {n for n in os.listdir(self.directory) if not n.endswith(".tmp")}
        except FileNotFoundError:
            return set()

    def handle(self, a: Attachment) -> dict[str, Any]:
        path = self._path(a.key)
        return {"uri": f"file://{path}", "path": path}

    def refresh(self, a: Attachment) -> None:
        """The link leads to the vvol's data itself: its size is always current."""

    def stale(self, atts: list[Attachment]) -> list[str]:
        return []
