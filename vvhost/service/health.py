"""``vvhost health``: one screen of what needs attention, and what to do about it.

    arrays       online / degraded / offline, free bytes
    containers   the fuller of provisioned / (capacity x overcommit) and held / capacity
                 (warning at its first alert level, critical at its last: 80 %, 90 %
                 unless ``container set --alerts`` says otherwise)
    endpoints    daemon running, restarts, last error (another node's: that node has
                 a live control-plane replica)
    operations   journal entries older than STUCK seconds (stuck)
    hosts        only those that need attention: unreachable, fenced
    findings     what the reconciler found and still finds

Each item carries a ``status`` (ok, warning, critical) and, when not ok, an
``advice`` line; the report's status is the worst of them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select

from ..catalog import bindrepo, repo, spacerepo, tenancy
from ..catalog.eventschema import findings
from ..errors import VvhostError
from ..model import HOST
from .context import Context
from .endpoints import EndpointManager
from .fencing import host_state

OK, WARNING, CRITICAL = "ok", "warning", "critical"
RANK = {OK: 0, WARNING: 1, CRITICAL: 2}
STUCK = 600.0  # seconds after which a journaled operation counts as stuck


@dataclass(frozen=True)
class Item:
    kind: str  # array, container, endpoint, operation, finding
    name: str
    status: str
    detail: str
    advice: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report(ctx: Context, endpoints: EndpointManager, stuck: float = STUCK) -> dict[str, Any]:
    items = _arrays(ctx) + _containers(ctx) + _endpoints(ctx, endpoints) + _ops(ctx, stuck)
    items += _findings(ctx) + _hosts(ctx)
    worst = max((RANK[i.status] for i in items), default=0)
    return {
        "status": next(s for s, r in RANK.items() if r == worst),
        "items": [i.to_dict() for i in items],
        "time": time.time(),
    }


def _arrays(ctx: Context) -> list[Item]:
    with ctx.db.tx() as conn:
        arrays = repo.list_arrays(conn)
    out = []
    for arr in arrays:
        arr = ctx.status(arr)
        if arr.state == "offline":
            out.append(
                Item("array", arr.name, CRITICAL, f"offline: {arr.reason}",
                     "bring its storage back (mount the filesystem, start the cluster); "
                     "operations on its vvols wait until then")
            )  # fmt: skip
            continue
        try:
            free = ctx.backend(arr.id).free_bytes()
        except VvhostError as exc:
            out.append(Item("array", arr.name, WARNING, f"free space unknown: {exc.message}",
                            "check the array with `vvhost array show`"))  # fmt: skip
            continue
        if arr.state == "degraded":
            out.append(Item("array", arr.name, WARNING, f"degraded: {arr.reason}",
                            "look at the backend's own health (ceph -s, dmesg)",
                            {"free": free}))  # fmt: skip
        else:
            out.append(Item("array", arr.name, OK, f"online, {_size(free)} free", "",
                            {"free": free}))  # fmt: skip
    return out


def _containers(ctx: Context) -> list[Item]:
    with ctx.db.tx() as conn:
        containers = repo.list_containers(conn)
        usage = [(c, spacerepo.usage(conn, c)) for c in containers]
    out = []
    for c, u in usage:
        used = u.fraction
        figures = {**u.to_dict(), "used": round(used, 4)}
        detail = (
            f"{used:.0%} full: {_size(u.provisioned)} of {_size(u.limit)} provisioned, "
            f"{_size(u.used)} of {_size(c.capacity)} held"
        )
        if used >= c.alerts[-1]:
            status, advice = CRITICAL, "grow its capacity or delete vvols it no longer needs"
        elif used >= c.alerts[0]:
            status, advice = WARNING, "plan to grow it before new vvols are refused"
        else:
            status, advice = OK, ""
        out.append(Item("container", c.name, status, detail, advice, figures))
    return out


def _endpoints(ctx: Context, endpoints: EndpointManager) -> list[Item]:
    with ctx.db.tx() as conn:
        pes = bindrepo.list_pes(conn)
        live = ctx.replica.live_nodes(conn)
    out = []
    for pe in pes:
        if not endpoints.owns(pe):  # another node's replica runs it
            placed: dict[str, Any] = {"node": pe.node, "protocol": pe.protocol}
            if live is not None and pe.node not in live:
                detail = f"its node {pe.node} has no live control-plane replica"
                advice = f"start a replica there, or `vvhost pe evacuate {pe.name} --to OTHER`"
                out.append(Item("endpoint", pe.name, CRITICAL, detail, advice, placed))
            else:
                out.append(Item("endpoint", pe.name, OK, f"run by node {pe.node}", "", placed))
            continue
        alive = endpoints.get(pe).alive()
        restarts = endpoints.restarts.get(pe.name, 0)
        error = endpoints.errors.get(pe.name)
        figures = {"alive": alive, "restarts": restarts, "protocol": pe.protocol}
        if not alive:
            detail = f"daemon not running{': ' + error if error else ''}"
            advice = "the supervisor retries; free its port or portal, see `vvhost pe show`"
            out.append(Item("endpoint", pe.name, CRITICAL, detail, advice, figures))
        elif restarts:
            detail = f"running, restarted {restarts} time(s) since vvhost serve started"
            advice = "find out why its daemon died (the server log, dmesg)"
            out.append(Item("endpoint", pe.name, WARNING, detail, advice, figures))
        else:
            out.append(Item("endpoint", pe.name, OK, "running", "", figures))
    return out


def _ops(ctx: Context, stuck: float) -> list[Item]:
    now = time.time()
    with ctx.db.tx() as conn:
        entries = repo.journal_list(conn)
    out = []
    for e in entries:
        age = now - e.created
        if age < stuck:
            continue
        detail = f"{e.op} of vvol {e.vvol} at step {e.step} for {age:.0f}s"
        advice = (
            "if nothing is copying any more, restart vvhost serve: recovery "
            "finishes or rolls it back"
        )
        out.append(Item("operation", e.id, WARNING, detail, advice, {"age": round(age, 1)}))
    return out


def _findings(ctx: Context) -> list[Item]:
    with ctx.db.tx() as conn:
        rows = list(conn.execute(select(findings).order_by(findings.c.first_seen)))
    return [
        Item(
            "finding",
            r.kind,
            WARNING,
            r.text,
            "`vvhost audit --fix` repairs leaks vvhost made; the rest needs a look",
            {"since": r.first_seen},
        )
        for r in rows
    ]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def _hosts(ctx: Context) -> list[Item]:
    """Hosts that are silent or fenced (the others are not listed)."""
    now = time.time()
    with ctx.db.tx() as conn:
        hosts = bindrepo.list_hosts(conn)
        seen = tenancy.last_used_by(conn, HOST)
    out = []
    for h in hosts:
        last = seen.get(h.name)
        state = host_state(h, last, now, ctx.config.unreachable_after)
        if state == "unreachable" and last is not None:
            out.append(Item("host", h.name, WARNING, f"no contact for {round(now - last)} s",
                            f"check the host; if it hangs, `vvhost host fence {h.name}` "
                            "before its VMs start elsewhere", {"last_contact": last}))  # fmt: skip
        elif state == "fenced":
            out.append(Item("host", h.name, WARNING, "fenced: cut off every endpoint",
                            f"recover its VMs elsewhere; `vvhost host unfence {h.name}` "
                            "when it is healthy again", {"fenced": h.fenced}))  # fmt: skip
    return out
