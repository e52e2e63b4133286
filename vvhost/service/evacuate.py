"""Moving every binding off an endpoint whose node is gone.

    pe evacuate OLD --to NEW
      for each active binding (vvol, host) of OLD, oldest first:
        rebind (bindings.py): NEW presents it, then the catalog switches,
        then OLD drops it (only if this replica runs OLD: a gone node has
        nobody to ask, and its daemons went with it)

Each binding is its own rebind, so one that fails (its vvol busy, NEW unable
to reach its array) is reported and the others still move.
"""

from __future__ import annotations

from typing import Any

from ..catalog import bindrepo
from ..errors import InvalidInput, VvhostError
from ..model import ACTIVE
from .bindings import BindingOps
from .context import Context
from .endpoints import PeOps


class Evacuation:
    def __init__(self, ctx: Context, pes: PeOps, bindings: BindingOps) -> None:
        self.ctx = ctx
        self.pes = pes
        self.bindings = bindings

    def run(self, ref: str, to: str) -> list[dict[str, Any]]:
        """Rebind every active binding of endpoint ``ref`` to endpoint ``to``."""
        with self.ctx.db.tx() as conn:
            old = self.pes.get(conn, ref)
            new = self.pes.get(conn, to)
            if old.id == new.id:
                raise InvalidInput(detail=f"endpoint {old.name} cannot be evacuated to itself")
            moving = [b for b in bindrepo.find_bindings(conn, pe=old.id) if b.state == ACTIVE]
        results = []
        for b in moving:
            try:
                handle = self.bindings.rebind(b.vvol, b.host, new.id)
                results.append({"vvol": b.vvol, "ok": True, "handle": handle})
            except VvhostError as exc:
                error = {"code": exc.code, "message": exc.message}
                results.append({"vvol": b.vvol, "ok": False, "error": error})
        return results
