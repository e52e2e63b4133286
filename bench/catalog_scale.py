"""Catalog scale: ``vvol show`` and ``vvol create`` latency over the unix socket
with 100 vvols in the catalog against with 10,000.

One server; the catalog is filled through the API by a few concurrent clients
(1 MiB vvols in one big container).  Each measurement is the median of 200
calls after 20 warm-up calls.  ``show`` looks up random existing vvols by id;
each timed ``create`` is followed by an untimed ``delete`` so the catalog stays
at the size being measured.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from vvhost.client import Client
from vvhost.daemon import ServerProcess

from .common import Result, check, median, private_dir, server, timed

SMALL = 100
BIG = 10_000
CALLS = 200
WARMUP = 20
WORKERS = 4
TARGET = "ratio <= 1.5"
LIMIT = 1.5
CONTAINER = "scale"


@dataclass
class Latency:
    show: list[float] = field(default_factory=list)
    create: list[float] = field(default_factory=list)


def _fill(proc: ServerProcess, names: list[str]) -> list[str]:
    """Create 1 MiB vvols called ``names`` with one client; return their ids."""
    client = proc.client()
    try:
        return [client.vvol_create(CONTAINER, "1M", name=n)["id"] for n in names]
    finally:
        client.close()


def populate(proc: ServerProcess, ids: list[str], target: int) -> None:
    """Grow the catalog to ``target`` vvols with WORKERS concurrent clients."""
    names = [f"vol-{i:05d}" for i in range(len(ids), target)]
    shards = [names[k::WORKERS] for k in range(WORKERS)]
    with ThreadPoolExecutor(WORKERS) as pool:
        for made in pool.map(lambda shard: _fill(proc, shard), shards):
            ids.extend(made)


def measure(c: Client, ids: list[str], rng: random.Random) -> Latency:
    lat = Latency()
    for i in range(WARMUP + CALLS):
        ref = rng.choice(ids)
        seconds, shown = timed(partial(c.vvol, ref))
        check(shown["id"] == ref, f"vvol show {ref} returned {shown['id']}")
        if i >= WARMUP:
            lat.show.append(seconds)
    for i in range(WARMUP + CALLS):
        seconds, made = timed(lambda: c.vvol_create(CONTAINER, "1M"))
        check(os.path.getsize(made["path"]) == 1 << 20, f"vvol {made['id']} has no 1 MiB file")
        c.vvol_delete(made["id"])
        if i >= WARMUP:
            lat.create.append(seconds)
    return lat


def _row(what: str, big: list[float], small: list[float], notes: list[str]) -> Result:
    res = Result(f"catalog: vvol {what} @{BIG} vs @{SMALL}", TARGET, LIMIT)
    res.measured, res.baseline = median(big), median(small)
    res.samples = {f"at_{BIG}": big, f"at_{SMALL}": small}
    p90 = f"{_p90(small) * 1e3:.2f} ms @{SMALL}, {_p90(big) * 1e3:.2f} ms @{BIG}"
    res.notes = [*notes, f"catalog: vvol {what} p90 {p90}"]
    return res.finish()


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


def run(reps: int = 3) -> list[Result]:
    """``reps`` is unused: each side is already the median of CALLS calls."""
    del reps
    rng = random.Random(42)
    notes: list[str] = []
    with private_dir("catalog") as tmp, server(os.path.join(tmp, "state")) as (proc, c):
        c.container_create(CONTAINER, 1 << 50)
        ids: list[str] = []
        populate(proc, ids, SMALL)
        small = measure(c, ids, rng)
        seconds, _ = timed(lambda: populate(proc, ids, BIG))
        notes.append(
            f"catalog: filled {BIG - SMALL} vvols in {seconds:.1f} s "
            f"({(BIG - SMALL) / seconds:.0f}/s, {WORKERS} clients)"
        )
        seconds, listing = timed(lambda: c.vvols(CONTAINER))
        check(len(listing) == BIG, f"catalog lists {len(listing)} vvols, expected {BIG}")
        check(c.vvol("vol-09999")["name"] == "vol-09999", "lookup by name failed")
        notes.append(f"catalog: vvol list of {BIG} took {seconds * 1e3:.0f} ms")
        big = measure(c, ids, rng)
    return [
        _row("show", big.show, small.show, notes),
        _row("create", big.create, small.create, []),
    ]
