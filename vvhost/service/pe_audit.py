"""Audit of the endpoints' access control against the catalog.

    for each running iSCSI endpoint, for each target tgtd has:
      catalog row (pe_targets) ──> owner "*"   : ACL must be exactly ALL
                                   owner HOST  : ACL must be exactly HOST's current
                                                 initiator name (host row exists),
                                                 and its CHAP user exactly HOST's account
      no catalog row, or its host is gone      : a problem (nobody should reach it)

    for each cluster an rbd endpoint reaches:
      identity client.vvhost-HOST  ──> HOST must exist, and its caps must be exactly
                                       the namespaces of its rbd bindings

Each mismatch is one line of ``vvhost audit``; endpoint reconciliation (at start
and after a daemon restart) repairs the iSCSI ones, the next bind or unbind of
the host the Ceph ones.
"""

from __future__ import annotations

from ..catalog import bindrepo
from ..pe.iscsi import IscsiEndpoint, acl_for
from ..tools import EndpointError
from .context import Context
from .endpoints import EndpointManager, catalog_targets


def audit_acls(ctx: Context, endpoints: EndpointManager) -> list[str]:
    return _audit_iscsi(ctx, endpoints) + endpoints.rbd.audit()


def _audit_iscsi(ctx: Context, endpoints: EndpointManager) -> list[str]:
    problems: list[str] = []
    with ctx.db.tx() as conn:
        pes = [pe for pe in bindrepo.list_pes(conn) if pe.protocol == "iscsi"]
        wanted = {pe.id: catalog_targets(conn, pe.id) for pe in pes}
    for pe in pes:
        ep = endpoints.get(pe)
        if not isinstance(ep, IscsiEndpoint) or not ep.alive():
            continue  # "not running" is reported with the bindings
        try:
            shown = ep.acls()
            users = ep.chap_users()
        except EndpointError as exc:
            problems.append(f"endpoint {pe.name}: cannot read its targets: {exc.message}")
            continue
        for tid, (iqn, names, addresses) in sorted(shown.items()):
            want = wanted[pe.id].get(tid)
            if want is None or want[0] != iqn:
                problems.append(
                    f"endpoint {pe.name} has target {tid} ({iqn}) that matches no host "
                    f"(admits {_describe(names, addresses)})"
                )
                continue
            expected = acl_for(want[1], want[1] is None)
            if (sorted(names), sorted(addresses)) != (sorted(expected[0]), sorted(expected[1])):
                problems.append(
                    f"endpoint {pe.name} target {tid} ({iqn}) admits "
                    f"{_describe(names, addresses)}, its host row says "
                    f"{_describe(*expected)}"
                )
            chap = [want[2][0]] if want[2] else []
            if users.get(tid, []) != chap:
                problems.append(
                    f"endpoint {pe.name} target {tid} ({iqn}) asks for CHAP as "
                    f"{', '.join(users.get(tid, [])) or 'nobody'}, its host's account is "
                    f"{chap[0] if chap else 'none'}"
                )
    return problems


def _describe(names: list[str], addresses: list[str]) -> str:
    entries = [*addresses, *names]
    return ", ".join(entries) if entries else "nobody"
