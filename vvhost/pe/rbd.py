"""The ``rbd`` endpoint: no daemon; hosts open RBD images with librbd themselves.

    binding (vvol on the endpoint's RBD array, host H)
      -> handle {"uri": "rbd:POOL/NS/IMAGE[@SNAP]", pool, namespace, image, snap,
                 monitors ["IP:PORT"], mon_host, user "vvhost-H", key, readonly}
      -> client.vvhost-H may open images in NS (see cephaccess.py; the control
         plane sets its caps from the catalog after every bind and unbind)

    STATE/pe/<name>/entries.json   {"<vvol>.<host>": {"host": H, "source": {...}}}
                                   what this endpoint presents, written at
                                   attach and detach (``present`` reads it)
    STATE/pe/<name>/cluster.json   how the control plane reaches the array's
                                   cluster (conf, user, keyring), recorded at
                                   the first attach so identities can be
                                   revoked later without any binding left

The endpoint presents nothing itself: attach checks the source and records
the binding, the Ceph identity does the access control.  A file source is
refused in one line.  An RBD image's size is the image's own: librbd clients
see a resize without anything being refreshed here.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from ..arrays.sources import FileSource, RbdSource
from ..errors import InvalidInput, VvhostError
from ..tools import EndpointError
from . import cephaccess
from .base import Attachment, attach_each
from .cephaccess import Cluster

ENTRIES = "entries.json"
CLUSTER = "cluster.json"


class RbdEndpoint:
    protocol = "rbd"

    def __init__(self, name: str, rundir: str) -> None:
        self.name = name
        self.rundir = rundir
        self._lock = threading.Lock()

    def _fail(self, detail: str) -> EndpointError:
        return EndpointError(tool=f"rbd endpoint {self.name}", detail=detail)

    # -- records ------------------------------------------------------------------------------
    def _read(self, name: str) -> dict[str, Any]:
        path = os.path.join(self.rundir, name)
        try:
            with open(path, encoding="utf-8") as fh:
                return dict(json.load(fh))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise self._fail(f"cannot read {path}: {exc}") from exc

    def _write(self, name: str, data: dict[str, Any]) -> None:
        path = os.path.join(self.rundir, name)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            os.makedirs(self.rundir, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise self._fail(f"cannot write {path}: {exc.strerror or exc}") from exc

    def cluster(self) -> Cluster | None:
        """How to reach the array's cluster (None before the first binding)."""
        data = self._read(CLUSTER)
        return Cluster.from_dict(data) if data else None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        try:
            os.makedirs(self.rundir, exist_ok=True)
        except OSError as exc:
            raise self._fail(str(exc)) from exc

    def stop(self) -> None:
        """Nothing runs: hosts reach the cluster themselves."""

    def alive(self) -> bool:
        return os.path.isdir(self.rundir)

    # -- attachments --------------------------------------------------------------------------
    def _source(self, a: Attachment) -> RbdSource:
        if isinstance(a.source, FileSource):
            raise InvalidInput(
                detail=f"rbd endpoint {self.name} serves RBD images only, not file data "
                f"({a.source.label()})"
            )
        return a.source

    def attach(self, a: Attachment) -> None:
        src = self._source(a)
        if not a.host:
            raise self._fail("an rbd binding needs its host's name")
        with self._lock:
            cluster = Cluster.of(src)
            if self.cluster() != cluster:
                self._write(CLUSTER, cluster.to_dict())
            entries = self._read(ENTRIES)
            entries[a.key] = {"host": a.host, "source": src.to_dict()}
            self._write(ENTRIES, entries)

    def attach_many(self, atts: list[Attachment]) -> dict[str, VvhostError]:
        return attach_each(self, atts)

    def detach(self, key: str) -> None:
        with self._lock:
            entries = self._read(ENTRIES)
            if entries.pop(key, None) is not None:
                self._write(ENTRIES, entries)

    def present(self) -> set[str]:
        return set(self._read(ENTRIES))

    def refresh(self, a: Attachment) -> None:
        """librbd clients learn a new image size from the cluster: nothing to do."""

    def stale(self, atts: list[Attachment]) -> list[str]:
        return []

    def handle(self, a: Attachment) -> dict[str, Any]:
        src = self._source(a)
        host = a.host or ""
        error = None
        try:
            secret, monitors, mon_host = cephaccess.access(Cluster.of(src), host)
        except VvhostError as exc:  # a listing still shows the binding, and why
            secret, monitors, mon_host, error = None, [], "", exc.message
        spec = "/".join(p for p in (src.pool, src.namespace, src.image) if p)
        return {
            "uri": f"rbd:{spec}" + (f"@{src.snap}" if src.snap else ""),
            "pool": src.pool,
            "namespace": src.namespace,
            "image": src.image,
            "snap": src.snap,
            "monitors": monitors,
            "mon_host": mon_host,
            "user": cephaccess.client_id(host),
            "key": secret,
            "readonly": a.readonly,
            **({"error": error} if error else {}),
        }
