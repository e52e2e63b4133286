"""The cross-node request/acknowledgement of endpoint changes, on a private
PostgreSQL: generations fold, an acknowledgement never goes backwards, and the
notification reaches the endpoint node's listener only when the request commits."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from vvhost.catalog import pesyncrepo
from vvhost.catalog.db import Database


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url)
    yield database
    database.close()


def test_requests_fold_and_acknowledgements_only_go_forward(db: Database) -> None:
    with db.tx() as conn:
        pesyncrepo.announce(conn, "pe-a", "/srv/n1")
        assert pesyncrepo.pending(conn, ["pe-a"]) == {}
        first = pesyncrepo.request(conn, "pe-a", "n1")
        second = pesyncrepo.request(conn, "pe-a", "n1")
        other = pesyncrepo.request(conn, "pe-b", "n2")
    assert (first, second, other) == (1, 2, 1)
    with db.tx() as conn:
        assert pesyncrepo.pending(conn, ["pe-a", "pe-b"]) == {"pe-a": 2, "pe-b": 1}
        pesyncrepo.ack(conn, "pe-a", 1, None, "/srv/n1")  # the owner read 1 before
        assert pesyncrepo.pending(conn, ["pe-a"]) == {"pe-a": 2}
        pesyncrepo.ack(conn, "pe-a", 2, "tgtadm: no such target", "/srv/n1")
        pesyncrepo.ack(conn, "pe-a", 1, None, "/srv/n1")  # a late, older round
        got = pesyncrepo.state(conn, "pe-a")
    assert got is not None and (got.wanted, got.applied) == (2, 2)
    assert got.state_dir == "/srv/n1" and got.error is None  # the latest round's outcome
    with db.tx() as conn:
        assert pesyncrepo.pending(conn, ["pe-a", "pe-b"]) == {"pe-b": 1}
        pesyncrepo.forget(conn, "pe-b")
        assert pesyncrepo.state(conn, "pe-b") is None


def test_the_node_hears_a_request_when_it_commits(db: Database) -> None:
    conninfo = make_url(db.url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as listener:
        channel = pesyncrepo.channel("n1")
        listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        with db.tx() as conn:
            pesyncrepo.request(conn, "pe-a", "n1")
            pesyncrepo.request(conn, "pe-x", "n2")  # another node's channel
            early = list(listener.notifies(timeout=0.5))
        assert early == []  # nothing before the commit
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=2.0, stop_after=1)]
        assert heard == [(channel, "pe-a")]
        with pytest.raises(RuntimeError), db.tx() as conn:
            pesyncrepo.request(conn, "pe-a", "n1")
            raise RuntimeError("the transaction fails after the request")
        assert list(listener.notifies(timeout=0.5)) == []  # a rolled-back request: silence
