"""The ``file`` endpoint: an NFS-like directory where each bound vvol appears as
a file named by its secondary id (a symbolic link to the vvol's data).

    PE_DIR/<vvol-id>.<host>   ->  ARRAY/vvols/<vvol-id>.raw
    PE_DIR/anything-else         not ours: never read, changed or removed

    STATE/pe/<name>/entries/<vvol-id>.<host>   ARRAY/vvols/<vvol-id>.raw
                                  one file per entry this endpoint made, holding
                                  the data path it links to: written before the
                                  link is made, removed after it is removed (a
                                  bind or unbind touches its own entry only, so it
                                  costs the same however many bindings there are;
                                  the single entries.json of earlier versions is
                                  converted on first use)

The endpoint knows its entries from that record, never from a directory
listing: ``present`` is the recorded entries that are still the links it made,
and ``detach`` removes an entry only if it is one (a file someone put in the
directory, even under a binding's name, stays where it is).  A link found
where the record has none is taken over only when it already leads to the
very data the binding wants (a crash between link and record).

Read-only attachments (snapshots) are made immutable (see ``immutable.py``)
before their link appears, so no path through the endpoint can change them,
root's included; the control plane clears the flag once the last read-only
file binding of the vvol is gone.

Only file sources can appear here: any other data source (an RBD image) is
refused in one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

from ..arrays.sources import file_path
from ..errors import VvhostError
from ..tools import EndpointError
from .base import Attachment, attach_each
from .immutable import ImmutableUnsupported, set_immutable

log = logging.getLogger("vvhost.pe.file")
RECORD = "entries.json"  # the record of earlier versions: one JSON object
ENTRIES = "entries"  # the record: a file per entry


class FileEndpoint:
    protocol = "file"

    def __init__(self, name: str, directory: str, rundir: str) -> None:
        self.name = name
        self.directory = directory
        self.rundir = rundir

    def _fail(self, detail: str) -> EndpointError:
        return EndpointError(tool=f"file endpoint {self.name}", detail=detail)

    # -- the record -------------------------------------------------------------------------
    def _record(self) -> str:
        """The directory of entry files (an earlier single-file record converted first)."""
        where = os.path.join(self.rundir, ENTRIES)
        old = os.path.join(self.rundir, RECORD)
        if os.path.exists(old):
            try:
                with open(old, encoding="utf-8") as fh:
                    data = json.load(fh)
            except (OSError, ValueError) as exc:
                raise self._fail(f"cannot read {old}: {exc}") from exc
            for key, target in data.items():
                self._put(str(key), str(target), where)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
        return where

    def _entry(self, key: str, where: str | None = None) -> str:
        if not key or "/" in key or key.startswith("."):
            raise self._fail(f"entry name {key!r} is not a plain file name")
        return os.path.join(where or self._record(), key)

    def _get(self, key: str) -> str | None:
        """The data path recorded for entry ``key``, None if there is none."""
        path = self._entry(key)
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(f"cannot read {path}: {exc.strerror or exc}") from exc

    def _put(self, key: str, target: str, where: str | None = None) -> None:
        path = self._entry(key, where)
        tmp = os.path.join(os.path.dirname(path), f".{key}.tmp{os.getpid()}")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(target)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise self._fail(f"cannot write {path}: {exc.strerror or exc}") from exc

    def _drop(self, key: str) -> None:
        path = self._entry(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(f"cannot remove {path}: {exc.strerror or exc}") from exc

    def _load(self) -> dict[str, str]:
        """Every recorded entry: name -> data path."""
        where = self._record()
        try:
            names = sorted(n for n in os.listdir(where) if not n.startswith("."))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._fail(f"cannot read {where}: {exc.strerror or exc}") from exc
        found = {n: self._get(n) for n in names}
        return {n: t for n, t in found.items() if t is not None}

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
            os.makedirs(self.rundir, exist_ok=True)
        except OSError as exc:
            raise self._fail(str(exc)) from exc
        if not os.path.isdir(self.directory):
            raise self._fail(f"{self.directory} is not a directory")

    def stop(self) -> None:
        """Nothing runs: the files stay for as long as their bindings."""

    def alive(self) -> bool:
        return os.path.isdir(self.directory)

    def _path(self, key: str) -> str:
        if not key or "/" in key or key.startswith("."):
            raise self._fail(f"entry name {key!r} is not a plain file name")
        return os.path.join(self.directory, key)

    @staticmethod
    def _is_link_to(path: str, target: str) -> bool:
        try:
            return os.path.islink(path) and os.readlink(path) == target
        except OSError:
            return False

    # -- attachments ------------------------------------------------------------------------
    def _data(self, a: Attachment) -> str:
        return file_path(a.source, f"file endpoint {self.name}")

    def attach(self, a: Attachment) -> None:
        data = self._data(a)
        link = self._path(a.key)
        mine = self._get(a.key)
        if self._is_link_to(link, data):
            if mine != data:  # made before the record was: the very link we want
                self._put(a.key, data)
            self._protect(a, data)
            return
        if os.path.lexists(link) and not (mine and self._is_link_to(link, mine)):
            raise self._fail(f"{link} exists and vvhost did not make it: it stays untouched")
        self._protect(a, data)
        self._put(a.key, data)  # the record first: a crash leaves nothing unrecorded
        tmp = os.path.join(self.directory, f".{a.key}.vvhost-{os.getpid()}")
        try:
            if os.path.islink(tmp):
                os.unlink(tmp)
            os.symlink(data, tmp)
            os.replace(tmp, link)
        except OSError as exc:
            with contextlib.suppress(OSError):
                if os.path.islink(tmp):
                    os.unlink(tmp)
            raise self._fail(str(exc)) from exc

    def _protect(self, a: Attachment, data: str) -> None:
        if not a.readonly:
            return
        try:
            links = os.stat(data).st_nlink
        except OSError as exc:
            raise self._fail(f"cannot read {data}: {exc.strerror or exc}") from exc
        if links > 1:  # the flag is the inode's: it would freeze the other names too
            raise self._fail(
                f"cannot present {a.vvol} read-only: its data {data} has {links} names "
                "(an operation on it is unfinished); try again when it is done"
            )
        try:
            set_immutable(data)
        except ImmutableUnsupported as exc:
            raise self._fail(
                f"cannot present {a.vvol} read-only: the filesystem of {data} has no "
                "immutable flag (use an iscsi or nbd endpoint for snapshots)"
            ) from exc
        except OSError as exc:
            raise self._fail(f"cannot make {data} immutable: {exc.strerror or exc}") from exc

    def attach_many(self, atts: list[Attachment]) -> dict[str, VvhostError]:
        return attach_each(self, atts)

    def detach(self, key: str) -> None:
        """Remove the entry ``key`` if it is still the link this endpoint made."""
        link = self._path(key)
        target = self._get(key)
        if target is None:
            return
        if self._is_link_to(link, target):
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._fail(f"cannot remove {link}: {exc.strerror or exc}") from exc
        elif os.path.lexists(link):
            log.warning("%s was replaced by someone else: left as it is", link)
        self._drop(key)

    def present(self) -> set[str]:
        return {k for k, t in self._load().items() if self._is_link_to(self._path(k), t)}

    def recorded(self) -> dict[str, str]:
        """Entry name -> data path of every entry this endpoint made and still owns."""
        return self._load()

    def handle(self, a: Attachment) -> dict[str, Any]:
        path = self._path(a.key)
        return {"uri": f"file://{path}", "path": path}

    def refresh(self, a: Attachment) -> None:
        """The link leads to the vvol's data itself: its size is always current."""

    def stale(self, atts: list[Attachment]) -> list[str]:
        return []
