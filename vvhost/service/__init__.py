"""The control plane's operations, independent of any transport."""

from __future__ import annotations

from typing import Any

from ..catalog import repo
from ..errors import NotFound
from ..model import Principal
from .bindings import BindingOps
from .configdoc import ConfigDocs
from .context import Config, Context
from .cow import CowOps
from .data import DataOps
from .datastores import DatastoreOps
from .endpoints import EndpointManager, PeOps
from .evacuate import Evacuation
from .fencing import FenceOps
from .health import STUCK
from .health import report as health_report
from .hosts import HostOps
from .inventory import ArrayOps, ContainerOps
from .maintenance import ArrayMaintenance
from .metrics import Metrics
from .nbdcreds import NbdCredentials
from .periodic import Periodic
from .reconciler import Reconciler
from .recovery import audit
from .space import SpaceRefresher
from .takeover import Takeover
from .tenancy import UNIX_ADMIN, Authz, TenantOps
from .vvols import VvolOps


class Service:
    def __init__(self, config: Config) -> None:
        self.ctx = Context(config)
        self.arrays = ArrayOps(self.ctx)
        self.containers = ContainerOps(self.ctx, self.arrays)
        self.datastores = DatastoreOps(self.ctx, self.containers, config.oui)
        self.configs = ConfigDocs(self.ctx)
        self.vvols = VvolOps(self.ctx, self.containers, self.datastores)
        self.cow = CowOps(self.ctx, self.vvols)
        self.data = DataOps(self.ctx, self.vvols)
        self.endpoints = EndpointManager(self.ctx)
        self.vvols.endpoints = self.endpoints  # extend shows bound hosts the new size
        self.tenants = TenantOps(self.ctx)
        self.authz = Authz(self.ctx)
        self.nbd = NbdCredentials(self.ctx, self.endpoints)
        self.hosts = HostOps(self.ctx, self.tenants, self.endpoints, revoke=self.nbd.revoke)
        self.pes = PeOps(self.ctx, self.endpoints)
        self.fencing = FenceOps(self.ctx, self.endpoints, self.nbd)
        self.contact_watch = Periodic(
            "host-contact", max(1.0, config.unreachable_after / 4), self.fencing.watch
        )
        self.bindings = BindingOps(self.ctx, self.hosts, self.pes, self.endpoints)
        self.evacuation = Evacuation(self.ctx, self.pes, self.bindings)
        self.maintenance = ArrayMaintenance(self.ctx)
        self.reconciler = Reconciler(self.ctx, self.endpoints, config.reconcile_interval)
        self.metrics = Metrics(self.ctx, self.endpoints)
        self.space = self.vvols.space
        self.refresher = SpaceRefresher(self.space, config.space_refresh)
        self.takeover = Takeover(self.ctx, self.endpoints)
        self.recovered: list[dict[str, str]] = []

    def start(self) -> None:
        """Create the default array, look at array capabilities again, recover
        interrupted operations, then start (or adopt) the endpoint daemons and
        make them present exactly the bindings in the catalog."""
        self.arrays.ensure_default()
        self.arrays.reprobe()
        # what no live replica owns (all of it with SQLite: one control plane)
        self.recovered = self.takeover.orphans()
        self.endpoints.start_all()
        for host in self.fencing.resume():  # fences a crash interrupted: cut them now
            self.recovered.append(
                {"op": "fence", "id": "", "vvol": "", "action": f"finished for host {host}"}
            )
        self.takeover.start()
        self.contact_watch.start()
        self.maintenance.start()
        self.reconciler.start()
        if self.refresher.interval > 0:
            self.refresher.start()

    def audit(self, fix: bool = False, grace: float | None = None) -> dict[str, Any]:
        """The consistency audit; with ``fix``, repair what is safe first (repairs.py)."""
        if fix:
            return self.reconciler.fix(grace)
        return audit(self.ctx, self.endpoints)

    def health(self, stuck: float = STUCK) -> dict[str, Any]:
        """What needs attention (health.py); operations older than ``stuck`` s are stuck."""
        return health_report(self.ctx, self.endpoints, stuck)

    def operation(self, op_id: str, caller: Principal = UNIX_ADMIN) -> dict[str, Any]:
        """Progress of operation ``op_id``, for its owner or an admin; anyone else is
        told it does not exist, exactly as for an id nobody used."""
        op_id = self.ctx.new_op(op_id)
        if not self.authz.op_visible(caller, op_id):
            raise NotFound(kind="operation", ref=op_id)
        with self.ctx.db.tx() as conn:
            entry = next((e for e in repo.journal_list(conn) if e.id == op_id), None)
        progress = self.ctx.progress.get(op_id)
        if entry is None and progress is None:
            raise NotFound(kind="operation", ref=op_id)
        done, total = progress or (0, 0)
        return {
            "id": op_id,
            "op": entry.op if entry else None,
            "step": entry.step if entry else None,
            "done": done,
            "total": total,
        }

    def close(self, keep_endpoints: bool = False) -> None:
        """Stop; endpoint daemons stop too unless ``keep_endpoints`` (then a later
        start adopts them and hosts keep their I/O paths meanwhile)."""
        self.takeover.stop()
        self.reconciler.stop()
        self.contact_watch.stop()
        self.maintenance.stop()
        self.refresher.stop()
        self.endpoints.stop_all(keep_daemons=keep_endpoints)
        self.ctx.close_backends()
        self.ctx.replica.stop()
        self.ctx.db.close()


__all__ = ["Config", "Service"]
