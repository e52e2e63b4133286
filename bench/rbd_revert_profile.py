"""Where the milliseconds of an RBD ``vvol revert`` go, on a private Ceph cluster.

    python -m bench.rbd_revert_profile [--size 4G] [--reps 5]

Two control planes on one private cluster (each its own pool):

- in this process (``Service``), each revert's time split into exclusive spans
  (a span's time excludes the spans inside it): catalog transactions, journal
  step, index reads and writes, the clone, the spare's check, the pool marker
  reads (``offline``), the answer (``describe``), the rest (Python);
  once taking the spare made after the previous revert, once with no spare
  (the clone made on the way);
- ``vvhost serve`` over its unix socket: the whole call as the bench times it,
  next to ``rbd snap rollback`` of a twin image holding the same data.

Each round writes 64 MiB into the vvol first and checks the vvol's digest
after the revert.  Only the main thread's calls are counted (the work after
the answer runs in another thread).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from vvhost.api.app import create_app
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.service import Config, Service
from vvhost.service.context import DEFAULT_ARRAY_ENV

from .cephbench import Volumes, ceph_pool
from .common import GiB, MiB, check, private_dir

WRITTEN = 1 * GiB
REWRITE = 64 * MiB


class Spans:
    """Exclusive time per label, per round, of the main thread's calls."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []
        self._now: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [start, time of children]

    @contextlib.contextmanager
    def span(self, label: str) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._stack.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            start, inner = self._stack.pop()
            took = time.perf_counter() - start
            self._now[label] += took - inner
            if self._stack:
                self._stack[-1][1] += took

    def wrap(self, obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.span(label):
                return fn(*args, **kwargs)

        setattr(obj, name, timed)

    def wrap_cm(self, obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name)

        @contextlib.contextmanager
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with self.span(label), fn(*args, **kwargs) as value:
                yield value

        setattr(obj, name, timed)

    def round(self, call: Callable[[], object]) -> float:
        self._now = defaultdict(float)
        with self.span("python and the rest"):
            start = time.perf_counter()
            call()
            total = time.perf_counter() - start
        self.rounds.append(dict(self._now))
        return total


def _instrument(svc: Service, array_id: str, spans: Spans) -> Any:
    ctx = svc.ctx
    be: Any = ctx.backend(array_id)
    spans.wrap_cm(ctx.db, "tx", "catalog transactions (SQLite)")
    spans.wrap(ctx, "step", "journal step 'committed'")
    spans.wrap(be.index, "apply", "index writes (omap)")
    spans.wrap(be.index, "pick", "index reads (omap)")
    spans.wrap(be.index, "_items", "index reads (omap)")
    spans.wrap(be.images, "clone", "librbd clone (+ id)")
    spans.wrap(be.images, "lookup", "spare check (rbd_id)")
    spans.wrap(be.cluster, "marker", "pool marker reads (offline)")
    spans.wrap(svc.vvols, "describe", "the answer (describe)")
    return be


def _table(rounds: list[dict[str, float]], totals: list[float]) -> list[str]:
    labels = sorted({k for r in rounds for k in r}, key=lambda k: -sum(r.get(k, 0) for r in rounds))
    out = [f"    {'total':36s} {statistics.median(totals) * 1e3:7.1f} ms"]
    for label in labels:
        value = statistics.median([r.get(label, 0.0) for r in rounds])
        out.append(f"    {label:36s} {value * 1e3:7.1f} ms")
    return out


def _in_process(tmp: str, lab: Any, cl: Volumes, size: str, reps: int) -> list[str]:
    lab.create_pool("prof")
    spec = {"backend": "rbd", "pool": "prof", "conf": lab.conf, "keyring": lab.admin_keyring}
    svc = Service(Config(state_dir=os.path.join(tmp, "inproc"), default_array=spec))
    svc.start()
    c = Client.in_process(create_app(svc))
    try:
        c.container_create("prof", "1T")
        v = c.vvol_create("prof", size, name="v")
        cl.write_spread(v["where"], WRITTEN, seed=1)
        digest = cl.digest(v["where"])
        s1 = c.vvol_snapshot("v", name="v-s1")["id"]
        spans = Spans()
        be = _instrument(svc, v["array_id"], spans)
        lines = []
        for spare in (True, False):
            spans.rounds, totals = [], []
            for rep in range(reps + 1):
                cl.write_spread(c.vvol("v")["where"], REWRITE, seed=100 + rep, offset=2 * MiB)
                be.after.drain(60)
                if not spare:
                    with be._lock:
                        be.reverts.drop_spare(s1)
                seconds = spans.round(lambda: svc.cow.revert("v", s1))
                check(cl.digest(c.vvol("v")["where"]) == digest, "the reverted data differs")
                if rep == 0:
                    spans.rounds.pop()  # the first round warms up (and makes the spare)
                else:
                    totals.append(seconds)
            how = "taking the spare" if spare else "no spare: the clone made on the way"
            lines += [f"  in-process service call, {how} ({reps} rounds, medians):"]
            lines += _table(spans.rounds, totals)
        return lines
    finally:
        c.close()
        svc.close()


def _over_http(tmp: str, lab: Any, cl: Volumes, size: str, reps: int) -> list[str]:
    lab.create_pool("http")
    spec = {"backend": "rbd", "pool": "http", "conf": lab.conf, "keyring": lab.admin_keyring}
    env = {DEFAULT_ARRAY_ENV: json.dumps(spec)}
    ours: list[float] = []
    theirs: list[float] = []
    proc = ServerProcess(os.path.join(tmp, "http"), env=env).start()
    c = proc.client()
    try:
        c.container_create("prof", "1T")
        v = c.vvol_create("prof", size, name="v")
        cl.write_spread(v["where"], WRITTEN, seed=1)
        s1 = c.vvol_snapshot("v", name="v-s1")["id"]
        twin = "http/twin"
        cl.rbd_cli("create", "--size", size, twin)
        cl.write_spread(twin, WRITTEN, seed=1)
        cl.rbd_cli("snap", "create", f"{twin}@s1")
        for rep in range(reps + 1):
            cl.write_spread(c.vvol("v")["where"], REWRITE, seed=100 + rep, offset=2 * MiB)
            start = time.perf_counter()
            c.vvol_revert("v", s1)
            if rep:
                ours.append(time.perf_counter() - start)
            cl.write_spread(twin, REWRITE, seed=100 + rep, offset=2 * MiB)
            start = time.perf_counter()
            cl.rbd_cli("snap", "rollback", "--no-progress", f"{twin}@s1")
            if rep:
                theirs.append(time.perf_counter() - start)
    finally:
        c.close()
        proc.stop()
    mine, alt = statistics.median(ours), statistics.median(theirs)
    return [
        f"  over HTTP (vvhost serve, unix socket), {reps} rounds, medians:",
        f"    vvol revert {mine * 1e3:.1f} ms, rbd snap rollback {alt * 1e3:.1f} ms, "
        f"ratio {mine / alt:.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rbd_revert_profile")
    parser.add_argument("--size", default="4G")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with private_dir("rbd-revert-profile") as tmp, ceph_pool(tmp) as (lab, _pool):
        cl = Volumes(lab)
        lines = [f"revert of a {args.size} RBD vvol holding 1 GiB, 64 MiB rewritten each round"]
        lines += _in_process(tmp, lab, cl, args.size, args.reps)
        lines += _over_http(tmp, lab, cl, args.size, args.reps)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
