"""Failover between two control-plane replicas on one PostgreSQL catalog.

    ra ──┐                   each round: ra stops in a linked clone (crash point
         ├── PostgreSQL      clone:copied), kill -9 ra, then
    rb ──┘   (pglab)           api      a client that tries ra, then rb, until a
                                        ``vvol create`` is answered
                               takeover until rb rolled the clone back (audit clean)

Times run from the kill.  The API is back as soon as the client reaches the
surviving replica (its locks on the clone's source died with ra's sessions);
the takeover waits for ra's lease to expire (3 s) and the next round of rb
(1 s).  Goal: the API answers again in under 5 s.  Each round checks that the
clone was rolled back and the source's pattern is intact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.errors import VvhostError
from vvhost.faults import FAULT_ENV, FAULT_MARK
from vvhost.pglab import PgLab, capability

from .common import Result, check, median, private_dir, skipped

ROUNDS = 5
GOAL = 5.0
TARGET = f"< {GOAL:g} s (ratio to {GOAL:g} s)"
NAMES = (
    "API answers a write after kill -9 of the active replica",
    "its operation taken over after kill -9",
)
LEASE = ["--lease", "3", "--heartbeat", "1"]


@contextmanager
def _replica(work: str, name: str, url: str, fault: str = "") -> Iterator[ServerProcess]:
    args = ["--db-url", url, "--node", f"node-{name}", "--replica", name, *LEASE]
    env = {FAULT_ENV: fault, "VVHOST_RECONCILE_INTERVAL": "0", "VVHOST_SPACE_REFRESH": "0"}
    proc = ServerProcess(os.path.join(work, name), env=env, args=args).start()
    try:
        yield proc
    finally:
        proc.stop()


def _write_anywhere(sockets: list[str], name: str, deadline: float) -> None:
    """Try each replica in turn (as a client with several URLs does) until one
    answers a ``vvol create``."""
    while True:
        for path in sockets:
            api = Client.unix(path)
            try:
                api.vvol_create("pool", "1M", name=name)
                return
            except VvhostError:
                pass
            finally:
                api.close()
        check(time.monotonic() < deadline, "no replica answered a write")
        time.sleep(0.02)


def _round(work: str, url: str, rb: ServerProcess, survivor: Client, i: int) -> tuple[float, float]:
    mark = os.path.join(work, "ra", FAULT_MARK)
    with _replica(work, "ra", url, fault="clone:copied") as ra:
        clone = subprocess.Popen(
            [sys.executable, "-m", "vvhost", "--socket", ra.socket]
            + ["vvol", "clone", "src@s", "--linked", "--name", f"c{i}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(mark):
                check(time.monotonic() < deadline, "the clone never reached its crash point")
                time.sleep(0.02)
            ra.kill()
            killed = time.monotonic()
            _write_anywhere([ra.socket, rb.socket], f"w{i}", killed + 60)
            api_back = time.monotonic() - killed
            while not survivor.audit()["ok"]:
                check(time.monotonic() < killed + 60, "the clone was never taken over")
                time.sleep(0.05)
            taken = time.monotonic() - killed
        finally:
            clone.wait(30)
            os.unlink(mark)
    check(f"c{i}" not in {v["name"] for v in survivor.vvols()}, "the clone was not rolled back")
    return api_back, taken


def run(reps: int | None = None) -> list[Result]:
    rounds = max(ROUNDS, reps or 0)
    reason = capability()
    if reason:
        return [skipped(name, TARGET, 1.0, reason) for name in NAMES]
    with private_dir("replicas") as work, ExitStack() as stack:
        lab = stack.enter_context(PgLab())
        url = lab.create_database("bench")
        with _replica(work, "ra", url) as ra:
            api = ra.client()
            api.container_create("pool", "8G")
            src = api.vvol_create("pool", "16M", name="src")
            with open(src["path"], "r+b") as fh:
                fh.write(b"vvhost" * 100_000)
            api.vvol_snapshot("src", name="src@s")
            api.close()
        rb = stack.enter_context(_replica(work, "rb", url))
        survivor = stack.enter_context(_client(rb))
        with open(src["path"], "rb") as fh:
            before = fh.read()
        times = [_round(work, url, rb, survivor, i) for i in range(rounds)]
        with open(src["path"], "rb") as fh:
            check(fh.read() == before, "the clone source changed")
        check(survivor.audit()["ok"], "the catalog is not clean")
    results = []
    for k, name in enumerate(NAMES):
        samples = [t[k] for t in times]
        row = Result(name, TARGET, 1.0, max(samples), GOAL).finish()  # the worst round
        row.samples["seconds"] = samples
        row.notes.append(
            f"{name}: median {median(samples):.2f} s, max {max(samples):.2f} s over "
            f"{rounds} kills (lease 3 s, heartbeat 1 s)"
        )
        results.append(row)
    return results


@contextmanager
def _client(proc: ServerProcess) -> Iterator[Client]:
    api = proc.client()
    try:
        yield api
    finally:
        api.close()
