"""Per-object locks shared by every replica of a PostgreSQL catalog.

The same interface as :class:`vvhost.locks.LockTable` (``hold(keys)``), and the
same order (sorted keys, so two holders never deadlock):

    hold(["host:h1", "vvol-id"])
      1. the in-process lock of each key (threads of this replica queue here,
         without a database session each)
      2. one pooled session, autocommit, for the whole hold:
           SELECT pg_advisory_lock(k)     for each key, sorted
           ... the operation runs (its catalog transactions use other sessions) ...
           SELECT pg_advisory_unlock_all()
      3. the session goes back to the pool; the in-process locks are released

Session-level advisory locks outlive transactions and end with the session:
a replica killed with -9 frees its locks when PostgreSQL sees its connections
close, and a frozen one when the replica taking over terminates its sessions
(they carry its ``application_name``).  A key is a 64-bit hash of its name;
two names sharing a hash only serialise each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

from ..locks import LockTable


def lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.sha256(b"vvhost-lock:" + name.encode()).digest()[:8], "big", signed=True
    )


class DbLockTable:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.local = LockTable()

    def __len__(self) -> int:
        return len(self.local)

    @contextmanager
    def hold(self, keys: Iterable[str | None]) -> Iterator[None]:
        ordered = sorted({k for k in keys if k})
        if not ordered:
            yield
            return
        with self.local.hold(ordered):
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            failed = False
            try:
                for key in ordered:
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key(key)})
                yield
            except BaseException:
                failed = True
                raise
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock_all()"))
                except BaseException:
                    conn.invalidate()  # never back to the pool holding locks
                    if not failed:  # a session ended under a failed body: its error tells
                        raise
                finally:
                    conn.close()
