"""``GET /metrics``: the control plane in the Prometheus text format.

One :class:`CollectorRegistry` per service (no process-wide registry), holding one
collector that reads the catalog at scrape time:

    vvhost_container_capacity_bytes{container,tenant}      gauge
    vvhost_container_provisioned_bytes{container,tenant}   gauge (charged against
                                                           capacity x overcommit)
    vvhost_container_limit_bytes{container,tenant}         gauge (capacity x overcommit)
    vvhost_container_used_bytes{container,tenant}          gauge (held: against capacity)
    vvhost_container_allocated_bytes{container,tenant}     gauge
    vvhost_array_up{array,backend}  1 online, 0.5 degraded, 0 offline
    vvhost_array_free_bytes{array}                          gauge (online arrays)
    vvhost_vvols{state,type}                                gauge
    vvhost_bindings{state}                                  gauge
    vvhost_operations_total{op,outcome}                     counter  (kept in the catalog:
    vvhost_operation_duration_seconds{op,outcome}           histogram  survives restarts)
    vvhost_endpoint_up{pe,protocol}                         gauge
    vvhost_endpoint_restarts_total{pe}                      counter  (since serve started)
    vvhost_events_total{kind,severity}                      counter  (kept in the catalog)
    vvhost_findings{kind}                                   gauge    (leak.found, audit.finding)

Who may read it: admins only (the unix socket, or an admin token over TCP).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..catalog import bindrepo, eventrepo, repo, spacerepo, statsrepo
from ..catalog.eventschema import OP_BUCKETS
from ..errors import VvhostError
from ..model import Array
from ..spacemodel import Usage
from .context import Context
from .endpoints import EndpointManager

CONTENT_TYPE = CONTENT_TYPE_LATEST
ARRAY_UP = {"online": 1.0, "degraded": 0.5, "offline": 0.0}


class CatalogCollector(Collector):
    def __init__(self, ctx: Context, endpoints: EndpointManager) -> None:
        self.ctx = ctx
        self.endpoints = endpoints

    def collect(self) -> Iterator[Metric]:
        with self.ctx.db.tx() as conn:
            listed = repo.list_containers(conn)
            containers = [spacerepo.usage(conn, c) for c in listed]
            named = [(c.name, c.tenant or "") for c in listed]
            arrays = repo.list_arrays(conn)
            vvols = statsrepo.vvols_by_state(conn)
            bindings = statsrepo.bindings_by_state(conn)
            ops = eventrepo.op_statistics(conn)
            counts = eventrepo.counts(conn)
            pes = bindrepo.list_pes(conn)
            open_findings = eventrepo.findings_by_kind(conn)
        yield from self._containers(named, containers)
        yield from self._arrays(arrays)
        g = GaugeMetricFamily("vvhost_vvols", "vvols by state and type", labels=["state", "type"])
        for state, kind, n in vvols:
            g.add_metric([state, kind], n)
        yield g
        g = GaugeMetricFamily("vvhost_bindings", "bindings by state", labels=["state"])
        for state, n in bindings:
            g.add_metric([state], n)
        yield g
        yield from self._operations(ops)
        up = GaugeMetricFamily(
            "vvhost_endpoint_up", "endpoint daemon running", labels=["pe", "protocol"]
        )
        restarts = CounterMetricFamily(
            "vvhost_endpoint_restarts", "endpoint daemon restarts since start", labels=["pe"]
        )
        for pe in pes:
            up.add_metric([pe.name, pe.protocol], 1.0 if self.endpoints.get(pe).alive() else 0.0)
            restarts.add_metric([pe.name], self.endpoints.restarts.get(pe.name, 0))
        yield up
        yield restarts
        ev = CounterMetricFamily(
            "vvhost_events", "events emitted, by kind", labels=["kind", "severity"]
        )
        for kind, severity, n in counts:
            ev.add_metric([kind, severity], n)
        yield ev
        found = GaugeMetricFamily(
            "vvhost_findings", "what the reconciler finds now, by kind", labels=["kind"]
        )
        for kind, n in open_findings:
            found.add_metric([kind], n)
        yield found

    @staticmethod
    def _containers(names: list[tuple[str, str]], usage: list[Usage]) -> Iterator[Metric]:
        labels = ["container", "tenant"]
        families = {
            "capacity": GaugeMetricFamily(
                "vvhost_container_capacity_bytes", "physical capacity", labels=labels
            ),
            "limit": GaugeMetricFamily(
                "vvhost_container_limit_bytes",
                "what writable vvols may provision: capacity x overcommit",
                labels=labels,
            ),
            "provisioned": GaugeMetricFamily(
                "vvhost_container_provisioned_bytes",
                "bytes charged against the limit (sizes of writable vvols, unique bytes of "
                "snapshots and linked clones)",
                labels=labels,
            ),
            "used": GaugeMetricFamily(
                "vvhost_container_used_bytes",
                "bytes held against the physical capacity",
                labels=labels,
            ),
            "allocated": GaugeMetricFamily(
                "vvhost_container_allocated_bytes", "bytes the arrays allocated", labels=labels
            ),
        }
        for name, u in zip(names, usage, strict=True):
            for key, family in families.items():
                family.add_metric(list(name), getattr(u, key))
        yield from families.values()

    def _arrays(self, arrays: list[Array]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "vvhost_array_up", "1 online, 0.5 degraded, 0 offline", labels=["array", "backend"]
        )
        free = GaugeMetricFamily("vvhost_array_free_bytes", "free bytes", labels=["array"])
        for arr in arrays:
            try:
                arr = self.ctx.status(arr)
                up.add_metric([arr.name, arr.backend], ARRAY_UP.get(arr.state, 0.0))
                if arr.state != "offline":
                    free.add_metric([arr.name], self.ctx.backend(arr.id).free_bytes())
            except VvhostError:
                up.add_metric([arr.name, arr.backend], 0.0)
        yield up
        yield free

    @staticmethod
    def _operations(ops: list[eventrepo.OpStat]) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "vvhost_operations", "journaled operations ended", labels=["op", "outcome"]
        )
        hist = HistogramMetricFamily(
            "vvhost_operation_duration_seconds",
            "how long journaled operations took",
            labels=["op", "outcome"],
        )
        for s in ops:
            total.add_metric([s.op, s.outcome], s.count)
            buckets = [(str(b), float(n)) for b, n in zip(OP_BUCKETS, s.buckets, strict=True)]
            buckets.append(("+Inf", float(s.count)))
            hist.add_metric([s.op, s.outcome], buckets, sum_value=s.seconds)
        yield total
        yield hist


class Metrics:
    """The service's own registry and its rendering."""

    def __init__(self, ctx: Context, endpoints: EndpointManager) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(CatalogCollector(ctx, endpoints))

    def render(self) -> bytes:
        return generate_latest(self.registry)
