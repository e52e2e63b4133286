"""Hosts: the KVM machines that bind vvols, identified by name (and, for iSCSI,
by their initiator name).

Removing a host (refused while it has bindings) takes its data-path access
with it, daemons first, then the catalog:

    1. its Ceph identities (client.vvhost-<host>, on every cluster an rbd
       endpoint reaches) are removed; an unreachable cluster stops here
    2. every iSCSI target made for it is deleted from its endpoint's tgtd
       (ACL, LUNs, sessions), so its initiator name reaches nothing
       and its CHAP account with them
    3. its row, tokens, CHAP account, target rows and LUN hints go in one transaction
    4. its NBD credentials are revoked

Rotating a host's token also rotates its data-path credentials: a new NBD
certificate identity, a new cephx key for each Ceph identity (same caps) and a
new iSCSI CHAP account (its running targets switch to it at once), so the old
ones are refused from then on.

A host added later under the same name starts from nothing: new targets whose
ACL is its own initiator name.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from ..catalog import bindrepo, chaprepo, nbdtlsrepo, tenancy
from ..errors import AlreadyExists, EndpointError, InUse, InvalidInput, NotFound
from ..model import HOST, Host
from .context import Context
from .endpoints import EndpointManager
from .tenancy import TenantOps

log = logging.getLogger("vvhost.hosts")

_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")
_IQN = re.compile(
    r"(iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.-]+(:[^\s]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})"
)


def check_host_name(name: str) -> str:
    if not isinstance(name, str) or not _HOST.fullmatch(name):
        raise InvalidInput(
            detail=f"host name {name!r} is invalid: use a hostname "
            "(letters, digits, '.' and '-', at most 63)"
        )
    return name


def check_iqn(iqn: str) -> str:
    if len(iqn) > 223 or not _IQN.fullmatch(iqn):
        raise InvalidInput(detail=f"initiator name {iqn!r} is not an iqn./eui./naa. name")
    return iqn


class HostOps:
    def __init__(
        self,
        ctx: Context,
        tokens: TenantOps,
        endpoints: EndpointManager | None = None,
        revoke: Callable[[str, bool], None] | None = None,
    ) -> None:
        """``revoke(host, removed)`` withdraws a host's data-path credentials
        (NBD over TLS) when its token is rotated or it is removed."""
        self.ctx = ctx
        self.tokens = tokens
        self.endpoints = endpoints
        self.revoke = revoke or (lambda _host, _removed: None)

    def add(self, name: str, iqn: str | None = None, tenant: str | None = None) -> dict[str, Any]:
        """Register a host; the answer carries its bearer token, shown this once."""
        check_host_name(name)
        if iqn is not None:
            check_iqn(iqn)
        with self.ctx.db.tx() as conn:
            if bindrepo.get_host(conn, name) is not None:
                raise AlreadyExists(kind="host", ref=name)
            if tenant is not None and tenancy.get_tenant(conn, tenant) is None:
                raise NotFound(kind="tenant", ref=tenant)
            host = Host(name=name, iqn=iqn, created=time.time(), tenant=tenant)
            bindrepo.insert_host(conn, host)
            chaprepo.issue(conn, name)
            nbdtlsrepo.forget_host(conn, name)  # nothing of an earlier host of that name
            token = self.tokens.issue(conn, HOST, name)
        return {**host.to_dict(), "token": token}

    def rotate_token(self, name: str) -> dict[str, Any]:
        """A new token for the host; the old one stops working at once.  The cephx
        keys are rotated first: a cluster that cannot be reached fails the rotation
        before anything changed (the new token is never lost behind an error)."""
        with self.ctx.locks.hold([f"host:{name}"]):
            with self.ctx.db.tx() as conn:
                self.get(conn, name)
            if self.endpoints is not None:  # the old cephx keys go with the old token
                self.endpoints.rbd.revoke(name, False)
            with self.ctx.db.tx() as conn:
                self.get(conn, name)
                out = {"name": name, "token": self.tokens.issue(conn, HOST, name)}
                chaprepo.issue(conn, name)  # a new CHAP account goes with the new token
                pes = {pe_id for pe_id, _tid in bindrepo.targets_of(conn, name)}
                owned = [p for p in (bindrepo.get_pe(conn, i) for i in sorted(pes)) if p]
            if self.endpoints is not None:  # its targets switch to the new account now
                for pe in owned:
                    try:
                        self.endpoints.resync(pe)
                    except EndpointError as exc:  # audit reports it; a restart repairs it
                        log.error(
                            "endpoint %s keeps host %s's old CHAP account: %s", pe.name, name, exc
                        )
        self.revoke(name, False)  # the old NBD certificate goes with the old token
        return out

    def get(self, conn: Any, name: str) -> Host:
        host = bindrepo.get_host(conn, name)
        if host is None:
            raise NotFound(kind="host", ref=name)
        return host

    def show(self, name: str) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            host = self.get(conn, name)
            count = len(bindrepo.find_bindings(conn, host=name))
        return {**host.to_dict(), "bindings": count}

    def remove(self, name: str) -> None:
        with self.ctx.locks.hold([f"host:{name}"]):
            with self.ctx.db.tx() as conn:
                self.get(conn, name)
                used = bindrepo.find_bindings(conn, host=name)
                if used:
                    raise InUse(kind="host", ref=name, reason=f"{len(used)} vvols are bound to it")
                owned = [
                    (bindrepo.get_pe(conn, pe_id), tid)
                    for pe_id, tid in bindrepo.targets_of(conn, name)
                ]
            if self.endpoints is not None:  # its Ceph identities first: if a cluster
                self.endpoints.rbd.revoke(name, True)  # is unreachable, the host stays
            for pe, tid in owned:
                if pe is not None and self.endpoints is not None:
                    self.endpoints.drop_target(pe, tid)
            with self.ctx.db.tx() as conn:
                bindrepo.delete_host(conn, name)
                chaprepo.forget(conn, name)
                nbdtlsrepo.forget_host(conn, name)
                bindrepo.delete_targets_of(conn, name)
                bindrepo.drop_host_hints(conn, name)
                tenancy.delete_tokens(conn, HOST, name)
        self.revoke(name, True)
