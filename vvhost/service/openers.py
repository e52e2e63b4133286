"""Who has a vvol's data open, in the catalog's words: a host or an endpoint.

    array.openers(vvol)          Opener(client, addr, entity)   (RBD: watchers,
          │                                                        entity from the monitors)
          ├─ entity client.vvhost-H           -> "host H"              (its own Ceph identity)
          ├─ entity = the array's own user     -> "endpoint E"          (an nbd/iscsi daemon of
          │                                       this control plane holding the image),
          │                                       else "the control plane's identity"
          ├─ another entity                    -> "client.X at ADDR"
          └─ no entity (monitors cannot say)   -> the hosts the catalog binds the vvol to,
                                                  else "client.N at ADDR"

Deleting refuses a vvol that is open, naming who has it (a host whose VM still
runs, a daemon that still serves it), at once: it is never retried.
"""

from __future__ import annotations

from ..arrays.base import Opener
from ..arrays.sources import DataSource, RbdSource
from ..catalog import bindrepo
from ..errors import VvhostError
from ..model import Binding, Pe, Vvol
from ..pe import cephaccess
from .context import Context
from .endpoints import EndpointManager


def who(ctx: Context, endpoints: EndpointManager | None, v: Vvol) -> list[str]:
    """One phrase per client that has ``v``'s data open (none: nobody known)."""
    backend = ctx.backend(v.array)
    found = backend.openers(v.id)
    if not found:
        return []
    source = backend.source(v.id)
    with ctx.db.tx() as conn:
        bindings = bindrepo.find_bindings(conn, vvol=v.id)
        pes = {p.id: p for p in bindrepo.list_pes(conn)}
    names: list[str] = []
    for o in found:
        phrase = name_opener(o, source, bindings, pes, endpoints)
        if phrase not in names:
            names.append(phrase)
    return names


def name_opener(
    o: Opener,
    source: DataSource,
    bindings: list[Binding],
    pes: dict[str, Pe],
    endpoints: EndpointManager | None,
) -> str:
    """One opener in the catalog's words (see the drawing above)."""
    if o.entity is None:
        hosts = sorted({b.host for b in bindings})
        if hosts:
            return f"host {', '.join(hosts)} ({o.client} at {o.addr}, by the catalog's bindings)"
        return f"{o.client} at {o.addr}"
    host = cephaccess.host_of(o.entity)
    if host is not None:
        return f"host {host} ({o.label()})"
    if isinstance(source, RbdSource) and o.entity == f"client.{source.user or 'admin'}":
        held = _holding(source, pes, endpoints)
        if held:
            return f"endpoint {', '.join(held)} ({o.label()})"
        return f"the control plane's own identity ({o.label()})"
    return o.label()


def _holding(
    source: DataSource, pes: dict[str, Pe], endpoints: EndpointManager | None
) -> list[str]:
    """Names of this control plane's endpoints whose daemon has ``source`` open."""
    if endpoints is None:
        return []
    held = []
    for pe in sorted(pes.values(), key=lambda p: p.name):
        if pe.protocol not in ("nbd", "iscsi"):
            continue
        ep = endpoints.get(pe)
        holds = getattr(ep, "holds", None)  # the daemons that open data themselves
        try:
            if holds is not None and holds(source):
                held.append(pe.name)
        except VvhostError:
            continue  # a daemon that cannot be asked is not named

    return held
