"""Remote API: ``datastore resolve`` and ``vvol create`` over TCP+TLS with a bearer
token against the same over the unix socket (median latency, ratio), and requests
per second with 8 concurrent clients on each transport."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from tests.tlsfixtures import make_certs
from vvhost.client import Client
from vvhost.daemon import ServerProcess, free_port

from .common import Result, check, median, private_dir

CALLS = 200
CLIENTS = 8
PER_CLIENT = 50


def latency(fn: Callable[[], object]) -> float:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(CALLS):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return median(samples)


def throughput(make: Callable[[], Client], call: Callable[[Client], object]) -> float:
    """Requests per second from CLIENTS threads, each with its own connection."""
    clients = [make() for _ in range(CLIENTS)]
    for c in clients:
        call(c)  # connect (and TLS handshake) before the clock starts

    def work(c: Client) -> None:
        for _ in range(PER_CLIENT):
            call(c)

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(work, clients))
    elapsed = time.perf_counter() - start
    for c in clients:
        c.close()
    return CLIENTS * PER_CLIENT / elapsed


def run(reps: int | None = None) -> list[Result]:
    with private_dir("remote") as work:
        certs = make_certs(os.path.join(work, "tls"))
        port = free_port()
        proc = ServerProcess(
            os.path.join(work, "state"),
            args=[
                "--listen",
                f"127.0.0.1:{port}",
                "--tls-cert",
                certs.cert,
                "--tls-key",
                certs.key,
            ],
        )
        proc.start()
        unix = proc.client()
        try:
            unix.tenant_create("t")
            token = unix.host_add("h1", tenant="t")["token"]
            unix.container_create("pool", "64G")
            ds = unix.datastore_create("ds", "32G", tenant="t")["id"]
            tls = Client.https(f"https://127.0.0.1:{port}", token, certs.ca)
            check(tls.datastore_resolve(ds)["datastore"] == ds, "resolve over TLS failed")
            out: dict[str, float] = {}
            for name, client, host in (("unix", unix, "h1"), ("tls", tls, None)):
                out[f"resolve-{name}"] = latency(partial(client.datastore_resolve, ds, host))
                out[f"create-{name}"] = latency(
                    partial(client.vvol_create, None, "1M", datastore=ds)
                )
            rps_unix = throughput(proc.client, lambda c: c.datastore_resolve(ds, "h1"))
            rps_tls = throughput(
                lambda: Client.https(f"https://127.0.0.1:{port}", token, certs.ca),
                lambda c: c.datastore_resolve(ds),
            )
            check(len(unix.vvols()) == 2 * (CALLS + 20), "vvol count after the benchmark")
            tls.close()
        finally:
            unix.close()
            proc.stop()
    rows = [
        Result(
            "remote: datastore resolve tls vs unix",
            "ratio (report)",
            3.0,
            out["resolve-tls"],
            out["resolve-unix"],
        ),
        Result(
            "remote: vvol create tls vs unix",
            "ratio (report)",
            3.0,
            out["create-tls"],
            out["create-unix"],
        ),
    ]
    for r in rows:
        r.finish()
    rows[0].notes.append(
        f"resolve with {CLIENTS} concurrent clients: {rps_unix:.0f} req/s over the "
        f"unix socket, {rps_tls:.0f} req/s over TLS with tokens"
    )
    return rows
