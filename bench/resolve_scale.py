"""The control plane at scale: ``datastore resolve`` latency (p50, p99) with
10,000 vvols and 50 hosts in the catalog against with 100 vvols and 2 hosts,
on SQLite and on PostgreSQL, plus what an administrator feels at both sizes:
one page of ``vvol list``, ``vvol show``, a ``bind`` and ``host list``.

Each catalog size is its own ``vvhost serve`` (over its unix socket); the two
run at once and the calls alternate between them, so a change in the
machine's load during the run weighs on both sides alike.

How a catalog is filled (fast, and through the real code paths):

- vvols: in-process through the service layer (``Service.vvols.create``, the
  code behind ``POST /v1/vvols``) before ``vvhost serve`` starts, because the
  API has no bulk create and 10,000 single HTTP round trips would make the
  fill the longest part of the run (on PostgreSQL 4 threads, as concurrent
  requests would; SQLite takes one writer at a time, and waiting writers poll).
  Every vvol is a real 1 MiB file of the ``dir`` array, placed in the
  datastore by its rule;
- hosts, the endpoint and the bindings: through the API once the plane runs,
  the bindings in batches (``POST /v1/bind`` takes up to 1,024 vvols): every
  vvol is bound to one host, round robin, through a ``file`` endpoint (no
  daemon, so the catalog's share of the latency is what is measured).

A timed ``bind`` binds a vvol to a second host and is followed by an untimed
unbind, so the catalog stays at the size being measured.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.pglab import PgLab, capability
from vvhost.service import Service
from vvhost.service.context import Config

from .common import Result, check, private_dir, skipped

SMALL = (100, 2)  # vvols, hosts
BIG = (10_000, 50)
RESOLVE_CALLS = 1000
CALLS = 300
WARM = 20
PAGE = 100
BIND_BATCH = 1000
TARGET = "p99 ratio <= 1.5"
LIMIT = 1.5
DATASTORE = "ds"
PE = "file"
FILLERS = {False: 1, True: 4}  # threads creating vvols in-process, by "on PostgreSQL"
MEASURES = ("resolve", "vvol list", "vvol show", "bind", "host list")


@dataclass
class Plane:
    """One running control plane and what its catalog holds."""

    api: Client
    vvols: list[str]
    hosts: list[str]
    bound: dict[str, str] = field(default_factory=dict)  # vvol id -> its host


def _fill_vvols(state: str, db_url: str | None, count: int) -> tuple[list[str], float]:
    """A container, a datastore over it and ``count`` 1 MiB vvols in the datastore,
    in-process (no ``vvhost serve`` runs yet); their ids and the seconds it took."""
    config = Config(state_dir=state, db_url=db_url, reconcile_interval=0, space_refresh=0)
    svc = Service(config)
    svc.start()
    try:
        start = time.perf_counter()
        svc.containers.create("pool", 1 << 50)
        svc.datastores.create(DATASTORE, 1 << 48, ["pool"])

        def make(i: int) -> str:
            made = svc.vvols.create(None, "1M", name=f"vol-{i:05d}", datastore=DATASTORE)
            return str(made["id"])

        with ThreadPoolExecutor(FILLERS[db_url is not None]) as pool:
            ids = list(pool.map(make, range(count)))
        return ids, time.perf_counter() - start
    finally:
        svc.close()


@contextmanager
def _plane(
    work: str, name: str, size: tuple[int, int], db_url: str | None, notes: list[str]
) -> Iterator[Plane]:
    nvols, nhosts = size
    state = os.path.join(work, name)
    ids, filled = _fill_vvols(state, db_url, nvols)
    proc = ServerProcess(state, args=["--db-url", db_url] if db_url else []).start()
    api = proc.client()
    try:
        start = time.perf_counter()
        hosts = [f"h{i:02d}" for i in range(nhosts)]
        for h in hosts:
            api.host_add(h)
        api.pe_create(PE, "file", path=os.path.join(work, f"nfs-{name}"))
        plane = Plane(api, ids, hosts)
        for k, host in enumerate(hosts):
            mine = ids[k::nhosts]
            for at in range(0, len(mine), BIND_BATCH):
                batch = mine[at : at + BIND_BATCH]
                done = api.bind(batch, host, pe=PE)
                check(all(r["ok"] for r in done), f"bind of {len(batch)} vvols to {host} failed")
                plane.bound.update(dict.fromkeys(batch, host))
        notes.append(
            f"{name}: {nvols} vvols in {filled:.1f} s (service layer, "
            f"{FILLERS[db_url is not None]} threads), {nhosts} hosts and "
            f"{len(plane.bound)} bindings in {time.perf_counter() - start:.1f} s (API)"
        )
        _check_catalog(plane)
        yield plane
    finally:
        api.close()
        proc.stop()


def _check_catalog(p: Plane) -> None:
    """The plane holds what it was filled with (else the timings mean nothing)."""
    shown = p.api.datastore(DATASTORE)
    check(shown["vvols"] == len(p.vvols), f"datastore counts {shown['vvols']} vvols")
    check(len(p.api.hosts()) == len(p.hosts), "host list is short")
    seen: list[str] = []
    cursor = None
    while True:
        got = p.api.page("vvols", limit=1000, cursor=cursor)
        seen += [v["id"] for v in got["items"]]
        cursor = got["next"]
        if not cursor:
            break
    check(sorted(seen) == sorted(p.vvols), "vvol list does not give every vvol once")


def _calls(p: Plane, rng: random.Random) -> dict[str, Callable[[], None]]:
    """One call of each measure on plane ``p`` (each checks its answer)."""
    api = p.api

    def resolve() -> None:
        host = rng.choice(p.hosts)
        out = api.datastore_resolve(DATASTORE, host)
        check(out["host"] == host and [e["name"] for e in out["pes"]] == [PE], "bad resolve")

    def vvol_list() -> None:
        got = api.page("vvols", limit=PAGE)
        check(len(got["items"]) == PAGE, f"a page of {len(got['items'])} vvols")

    def vvol_show() -> None:
        ref = rng.choice(p.vvols)
        check(api.vvol(ref)["id"] == ref, f"vvol show {ref}")

    def host_list() -> None:
        check(len(api.page("hosts")["items"]) == len(p.hosts), "host list is short")

    return {
        "resolve": resolve,
        "vvol list": vvol_list,
        "vvol show": vvol_show,
        "host list": host_list,
    }


def _bind_once(p: Plane, rng: random.Random) -> float:
    """Seconds of one bind of a vvol to a host it is not bound to (then unbound)."""
    vid = rng.choice(p.vvols)
    host = next(h for h in rng.sample(p.hosts, len(p.hosts)) if h != p.bound[vid])
    start = time.perf_counter()
    p.api.bind_one(vid, host, pe=PE)
    seconds = time.perf_counter() - start
    p.api.unbind([vid], host)
    return seconds


def _alternate(planes: list[Plane], what: str, n: int) -> list[list[float]]:
    """Seconds of ``n`` calls of ``what`` per plane, the planes taking turns."""
    rng = random.Random(7)
    calls = [_calls(p, rng) for p in planes]

    def one(i: int) -> float:
        if what == "bind":
            return _bind_once(planes[i], rng)
        start = time.perf_counter()
        calls[i][what]()
        return time.perf_counter() - start

    for _ in range(WARM):
        for i in range(len(planes)):
            one(i)
    out: list[list[float]] = [[] for _ in planes]
    for _ in range(n):
        for i in range(len(planes)):
            out[i].append(one(i))
    return out


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


def _rows(db: str, big: Plane, small: Plane, notes: list[str]) -> list[Result]:
    rows = []
    for what in MEASURES:
        n = RESOLVE_CALLS if what == "resolve" else CALLS
        at_big, at_small = _alternate([big, small], what, n)
        label = f"scale {db}: {what} p99 @{BIG[0]}/{BIG[1]} vs @{SMALL[0]}/{SMALL[1]}"
        res = Result(label, TARGET, LIMIT, quantile(at_big, 0.99), quantile(at_small, 0.99))
        res.samples = {"big": at_big, "small": at_small}
        p50 = quantile(at_big, 0.5) / quantile(at_small, 0.5)
        res.notes = [
            f"{label}: p50 {quantile(at_small, 0.5) * 1e3:.2f} -> "
            f"{quantile(at_big, 0.5) * 1e3:.2f} ms (x{p50:.2f}), p99 "
            f"{quantile(at_small, 0.99) * 1e3:.2f} -> {quantile(at_big, 0.99) * 1e3:.2f} ms "
            f"({n} calls each)"
        ]
        if what == "resolve":
            res.notes = notes + res.notes
        rows.append(res.finish())
    return rows


def _measure(work: str, db: str, urls: tuple[str | None, str | None]) -> list[Result]:
    notes: list[str] = []
    with ExitStack() as stack:
        big = stack.enter_context(_plane(work, f"{db}-big", BIG, urls[0], notes))
        small = stack.enter_context(_plane(work, f"{db}-small", SMALL, urls[1], notes))
        return _rows(db, big, small, notes)


def run(reps: int | None = None) -> list[Result]:
    """``reps`` is unused: each side is already many calls."""
    del reps
    results: list[Result] = []
    with private_dir("scale") as work:
        results += _measure(work, "SQLite", (None, None))
        reason = capability()
        if reason:
            return results + [
                skipped(f"scale PostgreSQL: {what}", TARGET, LIMIT, reason) for what in MEASURES
            ]
        with PgLab(fsync=True) as lab:
            urls = (lab.create_database("big"), lab.create_database("small"))
            results += _measure(work, "PostgreSQL", urls)
    return results
