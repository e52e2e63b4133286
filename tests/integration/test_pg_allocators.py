"""Allocators under many writers: a real ``vvhost serve`` on a private PostgreSQL,
hammered by concurrent clients.  Datastore ids (a catalog sequence), iSCSI
target ids and LUNs are chosen by one writer at a time, so none repeats; every
LUN then presents its own vvol (a pattern written through each one reads back).
The event counters count every event exactly once."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine, func, select

from tests.iscsiauth import image_opts
from tests.runner import run
from vvhost.catalog.eventschema import event_counts, events
from vvhost.catalog.schema import bindings, pe_targets, pes
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port

T = TypeVar("T")
HOSTS = {f"h{i}": f"iqn.2026-12.test.vvhost:h{i}" for i in range(1, 5)}
MiB = 1 << 20


@dataclass
class PgPlane:
    server: ServerProcess
    api: Client
    url: str


@pytest.fixture
def pgplane(tmp_path: str, pg_url: str) -> Iterator[PgPlane]:
    server = ServerProcess(
        os.path.join(tmp_path, "state"),
        os.path.join(tmp_path, "s.sock"),
        private_tgtd=True,
        args=["--db-url", pg_url],
    ).start()
    plane = PgPlane(server, server.client(), pg_url)
    try:
        for name, iqn in HOSTS.items():
            plane.api.host_add(name, iqn)
        plane.api.pe_create("iscsi1", "iscsi", portal=f"127.0.0.1:{free_port()}")
        plane.api.container_create("pool", "4G")
        yield plane
    finally:
        plane.api.close()
        server.stop()


def _hammer(
    plane: PgPlane, threads: int, work: int, job: Callable[[Client, int, int], T]
) -> list[T]:
    """``threads`` clients at once, each running ``job(client, thread, i)`` ``work`` times."""

    def worker(n: int) -> list[T]:
        client = plane.server.client()
        try:
            return [job(client, n, i) for i in range(work)]
        finally:
            client.close()

    with ThreadPoolExecutor(threads) as pool:
        return [r for rs in pool.map(worker, range(threads)) for r in rs]


def test_datastore_ids_never_repeat_under_concurrent_creates(pgplane: PgPlane) -> None:
    made = _hammer(
        pgplane,
        8,
        6,
        lambda c, n, i: c.datastore_create(f"ds-{n}-{i}", "1G", ["pool"])["id"],
    )
    assert len(made) == 48 and len(set(made)) == 48
    counters = sorted(int(str(ds)[-16:], 16) for ds in made)  # naa.6 ... 64-bit counter
    assert counters == list(range(counters[0], counters[0] + 48))
    listed = {ds["id"] for ds in pgplane.api.datastores()}
    assert set(made) <= listed


def _qemu_io(handle: dict[str, Any], initiator: str, command: str) -> str:
    """qemu-io on an iSCSI LUN, logged in as ``initiator`` (the host's own name)
    with the host's CHAP account."""
    return run("qemu-io", *image_opts(handle, initiator), "-c", command).stdout


def test_concurrent_iscsi_binds_get_distinct_targets_and_luns(pgplane: PgPlane) -> None:
    hosts = sorted(HOSTS)
    vids = [pgplane.api.vvol_create("pool", "1M")["id"] for _ in range(32)]

    def bind(client: Client, n: int, i: int) -> tuple[str, str, dict[str, Any]]:
        vid, host = vids[n * 4 + i], hosts[n % 4]  # two threads per host, each its own vvols
        return vid, host, client.bind_one(vid, host, pe="iscsi1")

    made = _hammer(pgplane, 8, 4, bind)
    handles = [h for _v, _h, h in made]
    assert len(handles) == 32
    uris = [str(h["uri"]) for h in handles]
    assert len(set(uris)) == 32, Counter(uris).most_common(3)

    engine = create_engine(pgplane.url)
    try:
        with engine.connect() as conn:
            tids = [r.tid for r in conn.execute(select(pe_targets))]
            luns = conn.execute(
                select(bindings.c.tid, bindings.c.secondary_id, func.count())
                .group_by(bindings.c.tid, bindings.c.secondary_id)
                .having(func.count() > 1)
            ).all()
            counted = conn.execute(select(func.sum(event_counts.c["count"]))).scalar_one()
            stored = conn.execute(select(func.count()).select_from(events)).scalar_one()
    finally:
        engine.dispose()
    assert len(tids) == 4 and len(set(tids)) == 4  # one target per host, distinct tids
    assert luns == []  # no LUN given twice on one target
    assert int(counted) == int(stored)  # every event counted once

    for n, (_vid, host, handle) in enumerate(made):
        out = _qemu_io(handle, HOSTS[host], f"write -P {n + 1} 0 1M")
        assert "wrote 1048576/1048576" in out
    for n, (_vid, host, handle) in enumerate(made):
        out = _qemu_io(handle, HOSTS[host], f"read -P {n + 1} 0 1M")
        assert "read 1048576/1048576" in out, out
    report = pgplane.api.audit()
    assert report["ok"], report["problems"]


def test_concurrent_endpoint_creates_get_distinct_control_ports(pgplane: PgPlane) -> None:
    portals = [f"127.0.0.1:{free_port()}" for _ in range(6)]
    _hammer(pgplane, 6, 1, lambda c, n, _i: c.pe_create(f"iscsi-{n}", "iscsi", portal=portals[n]))
    engine = create_engine(pgplane.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(pes.c.name, pes.c.config).where(pes.c.protocol == "iscsi"))
            ports = {name: json.loads(config)["control_port"] for name, config in rows}
    finally:
        engine.dispose()
    assert len(ports) == 7 and len(set(ports.values())) == 7, ports
    for n in range(6):  # every daemon runs: no two tgtd fought over one control port
        assert isinstance(pgplane.api.pe(f"iscsi-{n}")["pid"], int)
