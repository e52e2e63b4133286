"""NBD over TLS in the catalog: the CA, hosts' client credentials, daemons' ports.

    nbd_ca     id=1, cert, key              made by the first node that needs it
    nbd_creds  host, identity, cert, key    replaced on rotation, deleted on removal
    nbd_ports  pe_id, host, port            chosen by the endpoint's node, read by all

Every replica reads the same rows, so a certificate issued through one node is the
one each node's daemons let in, and a rotation through any node revokes the old one
everywhere. First writes are "insert unless there is one" and the answer is the row
that stands: two nodes that race agree on one CA, one first identity, one port.

:class:`CatalogTlsStore` is what :class:`vvhost.certs.NbdCa` and the TCP NBD
endpoint keep their state in (one short transaction a call).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.exc import IntegrityError

from .db import Database
from .schema import hosts, nbd_ca, nbd_creds, nbd_ports

CA_ROW = 1
Issued = tuple[str, str, str]  # identity, certificate PEM, key PEM


def _insert_unless_there(db: Database, table: Table, values: Mapping[str, object]) -> None:
    try:
        with db.tx() as conn:
            conn.execute(table.insert().values(**values))
    except IntegrityError:
        pass  # another node was first: its row stands


def identities(conn: Connection) -> dict[str, str]:
    """host -> its current identity, for each host that has credentials and is not
    fenced (the hosts an endpoint's daemons may let in)."""
    query = (
        select(nbd_creds.c.host, nbd_creds.c.identity)
        .join(hosts, hosts.c.name == nbd_creds.c.host)
        .where(hosts.c.fenced.is_(None))
    )
    return {r.host: r.identity for r in conn.execute(query)}


def forget_host(conn: Connection, host: str) -> None:
    """The host is removed: its credentials and its daemons' ports go."""
    conn.execute(delete(nbd_creds).where(nbd_creds.c.host == host))
    conn.execute(delete(nbd_ports).where(nbd_ports.c.host == host))


class CatalogTlsStore:
    """The CA, credentials and ports of :mod:`vvhost.certs` and ``pe/nbdtls.py``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- the CA ---------------------------------------------------------------------------
    def load_ca(self) -> tuple[str, str] | None:
        with self.db.tx() as conn:
            row = conn.execute(select(nbd_ca).where(nbd_ca.c.id == CA_ROW)).first()
        return (row.cert, row.key) if row else None

    def offer_ca(self, cert: str, key: str) -> tuple[str, str]:
        """Keep (cert, key) as the CA unless there is one; return the one that stands."""
        _insert_unless_there(self.db, nbd_ca, {"id": CA_ROW, "cert": cert, "key": key})
        stands = self.load_ca()
        assert stands is not None
        return stands

    # -- hosts' credentials ---------------------------------------------------------------
    def load(self, host: str) -> Issued | None:
        with self.db.tx() as conn:
            row = conn.execute(select(nbd_creds).where(nbd_creds.c.host == host)).first()
        return (row.identity, row.cert, row.key) if row else None

    def save(self, host: str, issued: Issued, replace: bool) -> Issued:
        """Record ``issued`` as the host's credentials (with ``replace``, instead of
        any it had; else only if it has none). Returns the ones that stand."""
        identity, cert, key = issued
        values = {"host": host, "identity": identity, "cert": cert, "key": key}
        if replace:
            with self.db.tx() as conn:
                conn.execute(delete(nbd_creds).where(nbd_creds.c.host == host))
                conn.execute(nbd_creds.insert().values(**values))
            return issued
        _insert_unless_there(self.db, nbd_creds, values)
        stands = self.load(host)
        return stands or issued

    def forget(self, host: str) -> None:
        with self.db.tx() as conn:
            conn.execute(delete(nbd_creds).where(nbd_creds.c.host == host))

    # -- daemons' ports -------------------------------------------------------------------
    def port(self, pe_id: str, host: str) -> int | None:
        with self.db.tx() as conn:
            row = conn.execute(
                select(nbd_ports.c.port).where(nbd_ports.c.pe_id == pe_id, nbd_ports.c.host == host)
            ).first()
        return int(row.port) if row else None

    def claim_port(self, pe_id: str, host: str, port: int) -> int:
        """Record ``port`` for the host's daemon unless one is; return the one recorded."""
        _insert_unless_there(self.db, nbd_ports, {"pe_id": pe_id, "host": host, "port": port})
        return self.port(pe_id, host) or port

    def drop_port(self, pe_id: str, host: str) -> None:
        with self.db.tx() as conn:
            conn.execute(
                delete(nbd_ports).where(nbd_ports.c.pe_id == pe_id, nbd_ports.c.host == host)
            )
