"""Hosts' credentials for NBD over TLS (TCP NBD endpoints), and their revocation.

host token-rotate NAME  ->  NbdCa.issue(NAME): a new DN      -> each TCP NBD endpoint
                                                                lets in only the new DN
host remove NAME        ->  NbdCa.forget(NAME)              -> each TCP NBD endpoint stops
                                                                NAME's daemon
GET /v1/hosts/NAME/nbd-credentials (the host itself or an admin) -> CA, cert, key, DN

The credentials are the catalog's, the same through every node. An endpoint whose
daemons run on another node is brought in line by that node's replica (a resync,
waited for) before the change is answered.
"""

from __future__ import annotations

import logging
from typing import Any

from ..catalog import bindrepo
from ..certs import NbdCa
from ..errors import EndpointError, NotFound, VvhostError
from ..pe.nbdtls import NbdTlsEndpoint
from .context import Context
from .endpoints import EndpointManager

log = logging.getLogger("vvhost.nbdcreds")


class NbdCredentials:
    def __init__(self, ctx: Context, manager: EndpointManager) -> None:
        self.ctx = ctx
        self.manager = manager
        self.ca: NbdCa = manager.tls.ca

    def credentials(self, host: str) -> dict[str, Any]:
        with self.ctx.db.tx() as conn:
            if bindrepo.get_host(conn, host) is None:
                raise NotFound(kind="host", ref=host)
        return self.ca.credentials(host).to_dict()

    def revoke(self, host: str, removed: bool) -> None:
        """The host's current certificate stops opening anything: on removal its
        daemons stop; else it gets new credentials and its daemons let in only those."""
        if removed:
            self.ca.forget(host)
        else:
            try:
                self.ca.issue(host)
            except EndpointError as exc:  # the new token stands: stop the host's daemons
                log.error("new NBD credentials for host %s failed: %s", host, exc)
                removed = True
        with self.ctx.db.tx() as conn:
            pes = [p for p in bindrepo.list_pes(conn) if p.protocol == "nbd" and p.portal]
        for pe in pes:
            if self.manager.elsewhere(pe):  # its node lets in the catalog's identities
                try:
                    self.manager.resync(pe)
                except VvhostError as exc:  # its node applies it when it next reconciles
                    log.error("endpoint %s keeps host %s's old NBD identity for now: %s",
                              pe.name, host, exc)  # fmt: skip
                continue
            with self.manager.lock([pe.id]):
                ep = self.manager.get(pe)
                if isinstance(ep, NbdTlsEndpoint):
                    ep.drop_host(host) if removed else ep.authorize(host)
