"""What every service operation shares: catalog, locks, array backends, the
journal with its fault points, and the progress of running copies."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection

from ..arrays import ArrayBackend, open_backend
from ..arrays.sources import DataSource, file_path
from ..catalog import eventrepo, repo, vvolrepo
from ..catalog.db import Database, sqlite_url
from ..catalog.dblocks import DbLockTable
from ..errors import (
    ArrayOffline,
    BackendError,
    Busy,
    DataMissing,
    InvalidInput,
    NotFound,
    StaleGeneration,
    VvhostError,
    VvolFailed,
)
from ..faults import FAULT_ENV, control_plane_fault
from ..locks import LockTable
from ..model import FAILED, READY, Array, JournalEntry, Vvol
from ..naa import DEFAULT_OUI
from .events import EventLog, Retention
from .replica import Replica, ReplicaSettings, application_name
from .storagefence import ClientLog


@dataclass(frozen=True)
class Config:
    state_dir: str
    db_url: str | None = None
    # "op:step": pause forever when that journal step is reached (crash tests kill -9 then).
    fault_at: str | None = None
    oui: str = DEFAULT_OUI  # IEEE OUI inside datastore ids (naa.6 + OUI + ...)
    # The default array ("local") when it is first made: {"backend": B, **settings};
    # None: a dir array under STATE/arrays/local.
    default_array: dict[str, str] | None = None
    # Seconds between two reconciler rounds (0: no background reconciler).
    reconcile_interval: float = 300.0
    # how long a replica waits for another node's replica to apply a binding change
    xnode_wait: float = 10.0
    # Event retention: the newest ``events_keep`` events, none older than ``events_days``.
    events_keep: int = 100_000
    events_days: float = 30.0
    # seconds between background refreshes of cached space figures (0: none)
    space_refresh: float = 30.0
    # a host whose last contact is older than this many seconds is reported unreachable
    unreachable_after: float = 300.0
    # this control plane as a replica (node, id, lease), see replica.py
    replica: ReplicaSettings = ReplicaSettings()

    @classmethod
    def from_env(cls, state_dir: str, db_url: str | None = None) -> Config:
        return cls(
            state_dir=state_dir,
            db_url=db_url,
            fault_at=os.environ.get(FAULT_ENV) or None,
            oui=os.environ.get("VVHOST_OUI") or DEFAULT_OUI,
            default_array=parse_array_spec(os.environ.get(DEFAULT_ARRAY_ENV)),
            reconcile_interval=_number("VVHOST_RECONCILE_INTERVAL", 300.0),
            xnode_wait=_number("VVHOST_XNODE_WAIT", 10.0),
            events_keep=int(_number("VVHOST_EVENTS_KEEP", 100_000)),
            events_days=_number("VVHOST_EVENTS_DAYS", 30.0),
            space_refresh=float(os.environ.get("VVHOST_SPACE_REFRESH") or 30.0),
            unreachable_after=_number("VVHOST_UNREACHABLE_AFTER", 300.0),
            replica=ReplicaSettings(
                node=os.environ.get("VVHOST_NODE") or "",
                replica=os.environ.get("VVHOST_REPLICA") or "",
                lease=_number("VVHOST_LEASE", 3.0),
                heartbeat=_number("VVHOST_HEARTBEAT", 1.0),
            ),
        )


def _number(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(detail=f"{name}={text!r} is not a number") from None
    if value < 0:
        raise InvalidInput(detail=f"{name}={text!r} is negative")
    return value


DEFAULT_ARRAY_ENV = "VVHOST_DEFAULT_ARRAY"


def parse_array_spec(text: str | None) -> dict[str, str] | None:
    """``{"backend": "rbd", "pool": ...}`` (JSON) for the default array, or None."""
    if not text:
        return None
    try:
        spec = json.loads(text)
    except ValueError:
        raise InvalidInput(detail=f"{DEFAULT_ARRAY_ENV} is not JSON: {text!r}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("backend"), str):
        raise InvalidInput(detail=f'{DEFAULT_ARRAY_ENV} needs {{"backend": ..., settings}}')
    return {str(k): str(v) for k, v in spec.items()}


class Progress:
    """done/total bytes of the copies running under each operation id."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._ops: dict[str, tuple[int, int]] = {}

    def callback(self, op_id: str) -> Any:
        def report(done: int, total: int) -> None:
            with self._guard:
                self._ops[op_id] = (done, total)

        return report

    def get(self, op_id: str) -> tuple[int, int] | None:
        with self._guard:
            return self._ops.get(op_id)

    def drop(self, op_id: str) -> None:
        with self._guard:
            self._ops.pop(op_id, None)


class Context:
    def __init__(self, config: Config) -> None:
        self.config = config
        os.makedirs(config.state_dir, exist_ok=True)
        self.replica = Replica(config.replica.checked())
        self.db = Database(
            config.db_url or sqlite_url(os.path.join(config.state_dir, "catalog.db")),
            application_name=application_name(self.replica.id),
        )
        # one process per SQLite catalog: its locks live in memory; replicas sharing
        # a PostgreSQL catalog lock in the database
        self.locks: LockTable | DbLockTable = (
            DbLockTable(self.db.engine) if self.db.postgres else LockTable()
        )
        self.replica.register(self.db)
        # the Ceph clients array backends open, recorded for fencing (storagefence.py)
        self.clients = ClientLog(self.db, self.replica)
        self.events = EventLog(self.db, Retention(config.events_keep, config.events_days))
        self.progress = Progress()
        self._backends: dict[str, ArrayBackend] = {}
        self._specs: dict[str, tuple[Any, str | None]] = {}  # what each backend was opened with
        self._degraded: dict[str, str] = {}  # array id -> why its probe failed
        self._guard = threading.Lock()

    # -- arrays -----------------------------------------------------------------------
    def backend(self, array_id: str) -> ArrayBackend:
        with self._guard:
            if array_id not in self._backends:
                with self.db.tx() as conn:
                    array = repo.get_array(conn, array_id)
                if array is None:
                    raise NotFound(kind="array", ref=array_id)
                self._backends[array_id] = open_backend(array, self.clients)
                self._specs[array_id] = (array.settings, array.fs_id)
            return self._backends[array_id]

    def register(self, array: Array, opened: ArrayBackend | None = None) -> None:
        """Open an array's backend (or take ``opened``), unless the one open already
        has the same settings; done outside catalog transactions so lookups inside
        them never need a second one.  A backend is closed only when replaced: a
        cluster connection shut down under running calls would take the process down."""
        spec = (array.settings, array.fs_id)
        with self._guard:
            old = self._backends.get(array.id)
            if opened is None and old is not None and self._specs.get(array.id) == spec:
                return
            self._backends[array.id] = opened or open_backend(array, self.clients)
            self._specs[array.id] = spec
        if old is not None and old is not opened:
            old.close()

    def forget_backend(self, array_id: str) -> None:
        with self._guard:
            backend = self._backends.pop(array_id, None)
            self._specs.pop(array_id, None)
        if backend is not None:
            backend.close()

    def close_backends(self) -> None:
        with self._guard:
            backends, self._backends = list(self._backends.values()), {}
            self._specs = {}
        for backend in backends:
            backend.close()

    def probe(self, array: Array) -> bool:
        """Look at an array's capabilities again; a failure makes it ``degraded``
        (never fatal), an offline array is left as it is.  True when probed."""
        try:
            caps = self.backend(array.id).probe()
        except ArrayOffline:
            return False
        except BackendError as exc:
            with self._guard:
                self._degraded[array.id] = exc.fields.get("detail") or exc.message
            return False
        with self._guard:
            self._degraded.pop(array.id, None)
        with self.db.tx() as conn:
            repo.set_array_capabilities(conn, array.id, caps)
        return True

    def status(self, array: Array) -> Array:
        """``array`` with its state now: online, offline (and why) or degraded."""
        reason = self.backend(array.id).offline()
        if reason is not None:
            return replace(array, state="offline", reason=reason)
        with self._guard:
            degraded = self._degraded.get(array.id)
        if degraded is not None and not self.probe(array):
            with self._guard:
                degraded = self._degraded.get(array.id, degraded)
            return replace(array, state="degraded", reason=degraded)
        return array

    def source(self, v: Vvol) -> DataSource:
        """Where a daemon finds ``v``'s data: its array must be online and the
        volume there (one clear error otherwise)."""
        backend = self.backend(v.array)
        backend.check()
        if not backend.exists(v.id):
            raise DataMissing(ref=v.name or v.id, array=backend.name, path=v.id)
        return backend.source(v.id)

    def data_path(self, v: Vvol) -> str:
        """The file of ``v``'s data, for endpoints that serve files."""
        return file_path(self.source(v), "this endpoint")

    def path(self, v: Vvol) -> str:
        """The file of ``v``'s data, without looking whether it is there."""
        return file_path(self.backend(v.array).source(v.id), "this endpoint")

    # -- lookups ----------------------------------------------------------------------
    def vvol(self, conn: Connection, ref: str, tenant: str | None = None) -> Vvol:
        """The vvol with id or name ``ref``; with ``tenant``, only among that tenant's
        (another tenant's vvol is "not found", the same as one that does not exist)."""
        if not ref:
            raise InvalidInput(detail="the vvol name or id is empty")
        v = vvolrepo.get(conn, ref)
        if v is not None and (tenant is None or v.tenant == tenant):
            return v
        found = vvolrepo.by_name(conn, ref)
        if tenant is not None:
            found = [f for f in found if f.tenant == tenant]
        if not found:
            raise NotFound(kind="vvol", ref=ref)
        if len(found) > 1:
            raise InvalidInput(detail=f"name {ref!r} matches {len(found)} vvols; use the id")
        return found[0]

    @staticmethod
    def ready(v: Vvol) -> Vvol:
        if v.state == FAILED:
            raise VvolFailed(ref=v.name or v.id, reason=v.failure or "unknown")
        if v.state != READY:
            raise Busy(ref=v.name or v.id, state=v.state, op=v.op)
        return v

    @staticmethod
    def expect(v: Vvol, generation: int | None) -> None:
        """Optimistic concurrency: refuse when the caller saw another generation."""
        if generation is not None and generation != v.generation:
            raise StaleGeneration(ref=v.name or v.id, expected=generation, actual=v.generation)

    # -- journal ----------------------------------------------------------------------
    def new_op(self, requested: str | None = None) -> str:
        if requested is None:
            return str(uuid.uuid4())
        try:
            return str(uuid.UUID(requested))
        except ValueError:
            raise InvalidInput(detail=f"operation id {requested!r} is not a UUID") from None

    def journal(
        self, conn: Connection, op_id: str, op: str, vvol_id: str | None, args: dict[str, Any]
    ) -> None:
        repo.journal_add(
            conn,
            JournalEntry(
                id=op_id, op=op, vvol=vvol_id, step="begin", args=args, created=time.time()
            ),
            owner=(self.replica.id, self.replica.epoch),
        )

    def step(self, op_id: str, op: str, step: str, *, record: bool = True) -> None:
        """Record that ``step`` is done (if recovery needs to know), then honour a fault point."""
        if record:
            with self.db.tx() as conn:
                repo.journal_step(conn, op_id, step)
        self.fault(op, step)

    def fault(self, op: str, step: str) -> None:
        control_plane_fault(self.config.fault_at, self.config.state_dir, op, step)

    def fail(self, op_id: str, vvol_ids: list[str], reason: str) -> None:
        """An operation that can neither finish nor roll back: its vvols become
        ``failed`` with the reason (``vvol show``, ``audit``), its journal entry goes."""
        with self.db.tx() as conn:
            for vid in vvol_ids:
                if vvolrepo.get(conn, vid) is not None:
                    vvolrepo.force(conn, vid, state=FAILED, op=None, failure=reason)
            repo.journal_remove(conn, op_id, outcome="failed", error=reason)

    @contextmanager
    def undo_on_error(self, entry_fn: Any, op_id: str | None = None) -> Iterator[None]:
        """Run the op's recovery handler if the body raises, then re-raise; with
        ``op_id``, the operation's event says what went wrong."""
        try:
            yield
        except BaseException as exc:
            entry_fn()
            if op_id is not None and isinstance(exc, Exception):
                why = (
                    exc.message if isinstance(exc, VvhostError) else f"{type(exc).__name__}: {exc}"
                )
                with self.db.tx() as conn:
                    eventrepo.note_error(conn, op_id, why)
            raise
