"""The catalog on PostgreSQL against SQLite: ``vvol create`` and bind+unbind
latency through a real ``vvhost serve`` (over its unix socket), the same
requests on a plane whose catalog is the SQLite file in its state directory.

Both planes run at once and the requests alternate between them, so a change
in the machine's load during the run weighs on both sides alike.  PostgreSQL is
a private server (``vvhost.pglab``) on the same machine, reached over its unix
socket, with fsync on and ``synchronous_commit=off``: commits do not wait for
the WAL flush, as SQLite's WAL with ``synchronous=NORMAL`` does not.  Binds go
to a ``file`` endpoint (no daemon), so the catalog's share of the latency is
what differs between the two planes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.pglab import PgLab, capability

from .common import Result, check, median, private_dir, skipped

WARM = 10
CYCLES = 100
TARGET = "ratio <= 1.5"
NAMES = ("vvol create: PostgreSQL vs SQLite", "bind+unbind file: PostgreSQL vs SQLite")


@contextmanager
def _plane(work: str, name: str, args: list[str]) -> Iterator[Client]:
    proc = ServerProcess(os.path.join(work, name), args=args).start()
    api = proc.client()
    try:
        api.host_add("h1")
        api.pe_create("file", "file", path=os.path.join(work, f"nfs-{name}"))
        api.container_create("pool", "64G")
        yield api
    finally:
        api.close()
        proc.stop()


def _alternate(planes: list[Client], fn: Callable[[Client], None], n: int) -> list[list[float]]:
    """Seconds of ``fn`` on each plane, the planes taking turns, ``n`` times each."""
    for _ in range(WARM):
        for api in planes:
            fn(api)
    out: list[list[float]] = [[] for _ in planes]
    for _ in range(n):
        for i, api in enumerate(planes):
            start = time.perf_counter()
            fn(api)
            out[i].append(time.perf_counter() - start)
    return out


def _measure(planes: list[Client], n: int) -> list[list[float]]:
    """Per plane: median seconds of one ``vvol create`` (1 MiB) and of one bind+unbind."""
    made: dict[int, list[str]] = {id(api): [] for api in planes}

    def create(api: Client) -> None:
        made[id(api)].append(api.vvol_create("pool", "1M")["id"])

    def cycle(api: Client) -> None:
        vid = made[id(api)][0]
        api.bind_one(vid, "h1", pe="file")
        api.unbind([vid], "h1")

    creates = _alternate(planes, create, n)
    binds = _alternate(planes, cycle, n)
    for api in planes:
        check(len(api.vvols()) == len(made[id(api)]), "a created vvol is missing")
        check(api.bindings() == [] and api.audit()["ok"], "the catalog is not clean")
    return [[median(c), median(b)] for c, b in zip(creates, binds, strict=True)]


def run(reps: int | None = None) -> list[Result]:
    n = max(CYCLES, reps or 0)
    reason = capability()
    if reason:
        return [skipped(name, TARGET, 1.5, reason) for name in NAMES]
    with private_dir("pg") as work, ExitStack() as stack:
        lab = stack.enter_context(PgLab(fsync=True))
        url = lab.create_database("bench")
        pg = stack.enter_context(_plane(work, "pg", ["--db-url", url]))
        lite = stack.enter_context(_plane(work, "lite", []))
        on_pg, on_lite = _measure([pg, lite], n)
    results = []
    for name, ours, theirs in zip(NAMES, on_pg, on_lite, strict=True):
        row = Result(name, TARGET, 1.5, ours, theirs).finish()
        row.notes.append(
            f"{name}: {ours * 1e3:.2f} ms on PostgreSQL, {theirs * 1e3:.2f} ms on SQLite "
            f"(medians of {n}, alternating)"
        )
        results.append(row)
    return results
