"""Background care of the arrays: purge what nothing needs any more.

Arrays that keep data for others (an RBD image retired by a revert while
snapshots or clones still use it) free it in ``reap``; this thread calls it
on every online array now and then, and ``vvhost array reap`` does it at once.
One array failing is logged and retried later: it never stops the others.
"""

from __future__ import annotations

import logging
from typing import Any

from ..catalog import repo
from ..errors import NotFound, VvhostError
from .context import Context
from .periodic import Periodic

log = logging.getLogger(__name__)


class ArrayMaintenance:
    def __init__(self, ctx: Context, interval: float = 60.0) -> None:
        self.ctx = ctx
        self._thread = Periodic("array-reaper", interval, self._reap_all)

    def reap(self, array_ref: str) -> dict[str, Any]:
        """Purge what array ``array_ref`` keeps for nobody; returns what went."""
        with self.ctx.db.tx() as conn:
            arr = repo.get_array(conn, array_ref)
        if arr is None:
            raise NotFound(kind="array", ref=array_ref)
        backend = self.ctx.backend(arr.id)
        backend.check()
        return {"array": arr.name, "purged": backend.reap()}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _reap_all(self) -> None:
        with self.ctx.db.tx() as conn:
            arrays = repo.list_arrays(conn)
        for arr in arrays:
            try:
                backend = self.ctx.backend(arr.id)
                if backend.offline() is None:
                    gone = backend.reap()
                    if gone:
                        log.info("array %s: purged %s", arr.name, ", ".join(gone))
            except VvhostError as exc:
                log.warning("array %s: reaping failed: %s", arr.name, exc.message)
