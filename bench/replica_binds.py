"""Bind throughput over two control-plane replicas against one: 64 bind+unbind
cycles from 8 concurrent clients, on one PostgreSQL catalog.

Two ``vvhost serve`` processes share a private PostgreSQL (``vvhost.pglab``, fsync
on, ``synchronous_commit=off`` as in ``catalog-pg``).  Each client is a separate
process (so the clients' own Python does not share one interpreter lock) acting
for its own host, binding its own 8 vvols one at a time through a ``file``
endpoint (no daemon: what is measured is the control plane and its catalog).
There are two such endpoints, ``file0`` for the even clients and ``file1`` for the
odd ones, in both set-ups: a replica serialises the attachments of one endpoint,
so both set-ups get the same endpoint parallelism and the difference is the
second process alone.
"Two replicas": even clients are given the URL list ``A,B`` and odd ones ``B,A``
(the failover client sends to the first that answers); "one replica": every
client is given ``A``.  The two set-ups take turns, several rounds, and the
median wall time of each is compared.  Every round checks that every vvol was
bound and unbound exactly once and that the catalog is clean afterwards.  The
CPU each part used (replicas, PostgreSQL, clients; from /proc) is reported per
cycle, with how many CPUs were busy on average: where the time goes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.pglab import PgLab, capability

from .common import Result, check, median, private_dir, skipped
from .cpustat import tree_cpu

CLIENTS = 8
BINDS = 64  # bind+unbind cycles per round, over all clients
ROUNDS = 3
NAME = "64 bind+unbind, 8 clients: 2 replicas vs 1"
TARGET = "throughput >= 1.5x (time ratio <= 0.667)"
LIMIT = 1 / 1.5


@contextmanager
def _replicas(work: str, url: str) -> Iterator[list[ServerProcess]]:
    """Two replicas on one catalog."""
    procs: list[ServerProcess] = []
    try:
        for name in ("a", "b"):  # in turn: the first one migrates the catalog
            procs.append(ServerProcess(os.path.join(work, name), args=["--db-url", url]).start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _client_loop(args: tuple[list[str], str, list[str], Any]) -> tuple[int, float]:
    """One client process: wait for the start, bind and unbind each of ``vvols``;
    returns the cycles done and the CPU seconds this client used for them."""
    servers, host, vvols, start = args
    pe = f"file{int(host[1:]) % 2}"
    api = Client.connect(servers)
    try:
        api.health()  # connected before the clock starts
        start.wait()
        begin = time.process_time()
        for vid in vvols:
            api.bind_one(vid, host, pe=pe)
            api.unbind([vid], host)
        return len(vvols), time.process_time() - begin
    finally:
        api.close()


@dataclass
class Round:
    wall: float  # seconds, every client's cycles, all clients at once
    cpu: dict[str, float]  # CPU seconds: each replica, PostgreSQL, the clients


def _round(
    pool: Any, manager: Any, lists: list[list[str]], vvols: list[list[str]], pids: dict[str, int]
) -> Round:
    start = manager.Event()
    jobs = [(lists[i], f"h{i}", vvols[i], start) for i in range(CLIENTS)]
    pending = pool.map_async(_client_loop, jobs)
    time.sleep(0.5)  # every client connected and waiting
    before = {name: tree_cpu(pid) for name, pid in pids.items()}
    begin = time.perf_counter()
    start.set()
    done = pending.get(timeout=600)
    wall = time.perf_counter() - begin
    cpu = {name: tree_cpu(pid) - before[name] for name, pid in pids.items()}
    cpu["clients"] = sum(c for _, c in done)
    check(sum(n for n, _ in done) == BINDS, "a client did not finish its cycles")
    return Round(wall, cpu)


def _prepare(api: Client, work: str) -> list[list[str]]:
    for i in range(2):
        api.pe_create(f"file{i}", "file", path=os.path.join(work, f"nfs{i}"))
    api.container_create("pool", "64G")
    per = BINDS // CLIENTS
    out: list[list[str]] = []
    for i in range(CLIENTS):
        api.host_add(f"h{i}")
        out.append([api.vvol_create("pool", "1M")["id"] for _ in range(per)])
    return out


def _measure(
    work: str, urls: list[str], pids: dict[str, int], rounds: int
) -> dict[str, list[Round]]:
    admin = Client.connect(urls[:1])
    try:
        vvols = _prepare(admin, work)
        one = [urls[:1] for _ in range(CLIENTS)]
        two = [urls if i % 2 == 0 else urls[::-1] for i in range(CLIENTS)]
        ctx = multiprocessing.get_context("spawn")
        out: dict[str, list[Round]] = {"one": [], "two": []}
        with ctx.Manager() as manager, ctx.Pool(CLIENTS) as pool:
            _round(pool, manager, one, vvols, pids)  # warm: pools, caches, PostgreSQL plans
            for _ in range(rounds):
                for key, lists in (("one", one), ("two", two)):
                    out[key].append(_round(pool, manager, lists, vvols, pids))
                    check(admin.bindings() == [], "a binding was left after a round")
        check(admin.audit()["ok"], "audit is not clean after the rounds")
        return out
    finally:
        admin.close()


def _where(label: str, rounds: list[Round]) -> str:
    """CPU per cycle of each part, and how many CPUs were busy on average."""
    names = list(rounds[0].cpu)
    per = {n: sum(r.cpu[n] for r in rounds) / (len(rounds) * BINDS) for n in names}
    busy = sum(sum(r.cpu.values()) for r in rounds) / sum(r.wall for r in rounds)
    parts = ", ".join(f"{n} {ms * 1e3:.1f}" for n, ms in per.items())
    return f"{label}: CPU ms per cycle: {parts}; {busy:.2f} CPUs busy on average"


def run(reps: int | None = None) -> list[Result]:
    rounds = max(ROUNDS, reps or 0)
    reason = capability()
    if reason:
        return [skipped(NAME, TARGET, LIMIT, reason)]
    with private_dir("replicas") as work, ExitStack() as stack:
        lab = stack.enter_context(PgLab(fsync=True))
        url = lab.create_database("bench")
        procs = stack.enter_context(_replicas(work, url))
        urls = [f"unix://{p.socket}" for p in procs]
        pids = {
            "replica A": _pid(procs[0]),
            "replica B": _pid(procs[1]),
            "PostgreSQL": lab.pid or 0,
        }
        got = _measure(work, urls, pids, rounds)
    two, one = [r.wall for r in got["two"]], [r.wall for r in got["one"]]
    row = Result(NAME, TARGET, LIMIT, median(two), median(one)).finish()
    row.samples = {"two replicas": two, "one replica": one}
    tput_two, tput_one = BINDS / median(two), BINDS / median(one)
    row.notes.append(
        f"{NAME}: {tput_two:.1f} cycles/s on 2 replicas, {tput_one:.1f} cycles/s on 1 "
        f"(x{tput_two / tput_one:.2f}; medians of {rounds} rounds, taking turns; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    row.notes.append(_where("2 replicas", got["two"]))
    row.notes.append(_where("1 replica", got["one"]))
    row.notes.append(_ceiling(got))
    return [row]


def _ceiling(got: dict[str, list[Round]]) -> str:
    """The most the CPU allows: on this machine's CPUs, the busiest replica on one
    CPU (the interpreter lock) and everything together on all of them; and with each
    replica on CPUs of its own, as on separate machines."""
    cpus = os.cpu_count() or 1

    def per(rounds: list[Round], name: str | None = None) -> float:
        used = sum((r.cpu[name] if name else sum(r.cpu.values())) for r in rounds)
        return used / (len(rounds) * BINDS)

    one = min(1 / per(got["one"], "replica A"), cpus / per(got["one"]))
    busiest = max(per(got["two"], "replica A"), per(got["two"], "replica B"))
    two = min(1 / busiest, cpus / per(got["two"]))
    apart = 1 / busiest
    return (
        f"CPU ceilings: 1 replica {one:.0f} cycles/s, 2 replicas {two:.0f} cycles/s on "
        f"{cpus} CPUs shared with PostgreSQL and the clients (x{two / one:.2f}); "
        f"2 replicas on CPUs of their own {apart:.0f} cycles/s (x{apart / one:.2f})"
    )


def _pid(proc: ServerProcess) -> int:
    return proc.proc.pid if proc.proc else 0
