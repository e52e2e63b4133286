"""Binding: bind+unbind latency per protocol against the same daemon operation done
directly, and a batch bind of 256 vvols against a loop of single binds.

Alternatives, in the same run on their own daemons:
- iSCSI: ``tgtadm`` LUN add + delete (two processes), and add + set identity +
  delete (three: what a bind must do so hosts can match the LUN to its vvol);
- NBD: QMP ``blockdev-add`` + ``block-export-add`` + ``block-export-del`` +
  ``blockdev-del`` on a ``qemu-storage-daemon``;
- file: no daemon, so only vvhost's own latency is reported;
- NBD on TCP (TLS, one daemon per host): the steady bind+unbind against the same
  QMP cycle, and the first bind of a new host (its certificate and its daemon)
  against a steady one (reported, not judged).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

from vvhost.client import Client
from vvhost.daemon import free_port
from vvhost.pe.proc import Daemon
from vvhost.tools.qmp import Qmp
from vvhost.tools.qsd import StorageDaemonApi, node_name_for, qsd_argv
from vvhost.tools.tgtadm import Tgtadm

from .common import Result, check, median, private_dir, server

QEMU_IQN = "iqn.2008-11.org.linux-kvm"
CYCLES = 100
BATCH = 256
PROTOCOLS = ("iscsi", "nbd", "file")


def cycle_times(fn: Callable[[], None], n: int = CYCLES) -> list[float]:
    for _ in range(10):  # warm up
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def raw_tgtadm(work: str, image: str) -> tuple[float, float]:
    """Median seconds of tgtadm LUN add+delete, and add+identity+delete."""
    port = next(n for n in range(3000, 4000) if not os.path.exists(f"/run/tgtd/socket.{n}"))
    os.makedirs("/run/tgtd", exist_ok=True)
    adm = Tgtadm(port)
    daemon = Daemon(
        "tgtd-bench",
        ["tgtd", "-f", "-C", str(port), "--iscsi", f"portal=127.0.0.1:{free_port()}"],
        os.path.join(work, "tgtd"),
        ready=adm.ping,
    )
    os.makedirs(daemon.rundir)
    daemon.start()
    base = [
        "tgtadm",
        "-C",
        str(port),
        "--lld",
        "iscsi",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
    ]

    def sh(*args: str) -> None:
        subprocess.run([*base, *args], check=True, capture_output=True)

    try:
        adm.target_new(1, "iqn.2026-11.io.vvhost:bench")

        def plain() -> None:
            sh("--op", "new", "-b", image)
            sh("--op", "delete")

        def identity() -> None:
            sh("--op", "new", "-b", image)
            sh("--op", "update", "--params", "vendor_id=VVHOST,product_id=vvol,scsi_sn=" + "a" * 32)
            sh("--op", "delete")

        return median(cycle_times(plain)), median(cycle_times(identity))
    finally:
        daemon.stop(timeout=0)
        for leftover in (f"/run/tgtd/socket.{port}", f"/run/tgtd/socket.{port}.lock"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def raw_qmp(work: str, image: str) -> float:
    rundir = os.path.join(work, "qsd")
    os.makedirs(rundir)
    qmp_path = os.path.join(rundir, "qmp.sock")
    daemon = Daemon("qsd-bench", qsd_argv(qmp_path), rundir, ready=lambda: os.path.exists(qmp_path))
    daemon.start()
    qmp = Qmp(qmp_path)
    qmp.connect()
    api = StorageDaemonApi(qmp)
    try:
        api.start_nbd_server_unix(os.path.join(rundir, "nbd.sock"))
        node = node_name_for(image)

        def cycle() -> None:
            api.add_file_node(node, image, readonly=False)
            api.add_export("bench", node, "bench", writable=True)
            api.del_export("bench")
            api.del_node(node)

        return median(cycle_times(cycle))
    finally:
        qmp.close()
        daemon.stop()


def vvhost_cycle(api: Client, vid: str, pe: str) -> float:
    def cycle() -> None:
        api.bind_one(vid, "h1", pe=pe)
        api.unbind([vid], "h1")

    return median(cycle_times(cycle))


def first_tls_bind(api: Client, vid: str, pe: str) -> float:
    """Seconds of the first bind of a new host on a TCP NBD endpoint (issues its
    certificate and starts its daemon), unbind not counted."""
    api.host_add("h-first")
    start = time.perf_counter()
    api.bind_one(vid, "h-first", pe=pe)
    took = time.perf_counter() - start
    api.unbind([vid], "h-first")
    api.host_remove("h-first")
    return took


def batch_per_vvol(api: Client, vids: list[str], pe: str) -> tuple[float, float]:
    """(seconds per vvol in one batch bind, seconds per vvol in a loop of single binds)."""
    start = time.perf_counter()
    results = api.bind(vids, "h1", pe=pe)
    batch = (time.perf_counter() - start) / len(vids)
    check(all(r["ok"] for r in results), f"batch bind on {pe} failed: {results[:2]}")
    check(len({r["handle"]["uri"] for r in results}) == len(vids), "handles are not distinct")
    api.unbind(vids, "h1")
    start = time.perf_counter()
    for vid in vids:
        api.bind_one(vid, "h1", pe=pe)
    single = (time.perf_counter() - start) / len(vids)
    api.unbind(vids, "h1")
    check(api.bindings() == [] and api.audit()["ok"], "bindings left after the batch benchmark")
    return batch, single


def run(reps: int | None = None) -> list[Result]:
    results = []
    with private_dir("binding") as work:
        image = os.path.join(work, "raw.img")
        with open(image, "wb") as fh:
            fh.truncate(1 << 20)
        with server(os.path.join(work, "state"), private_tgtd=True) as (_proc, api):
            api.host_add("h1", QEMU_IQN)
            api.pe_create("iscsi", "iscsi", portal=f"127.0.0.1:{free_port()}")
            api.pe_create("nbd", "nbd")
            api.pe_create("file", "file", path=os.path.join(work, "nfs"))
            api.pe_create("nbd-tls", "nbd", portal=f"127.0.0.1:{free_port()}")
            api.container_create("pool", "64G")
            vid = api.vvol_create("pool", "1M")["id"]
            ours = {p: vvhost_cycle(api, vid, p) for p in (*PROTOCOLS, "nbd-tls")}
            first_tls = first_tls_bind(api, vid, "nbd-tls")
            vids = [api.vvol_create("pool", "1M")["id"] for _ in range(BATCH)]
            batches = {p: batch_per_vvol(api, vids, p) for p in PROTOCOLS}
        plain, identity = raw_tgtadm(work, image)
        qmp = raw_qmp(work, image)
    target = "ratio <= 2"
    results.append(
        Result("bind+unbind iscsi vs tgtadm add+delete", target, 2.0, ours["iscsi"], plain).finish()
    )
    results.append(
        Result(
            "bind+unbind iscsi vs tgtadm add+id+delete", target, 2.0, ours["iscsi"], identity
        ).finish()
    )
    results.append(
        Result("bind+unbind nbd vs QMP add+export+del", target, 2.0, ours["nbd"], qmp).finish()
    )
    results.append(
        Result(
            "bind+unbind nbd TLS (TCP) vs QMP add+export+del", target, 2.0, ours["nbd-tls"], qmp
        ).finish()
    )
    first = Result(
        "first TCP nbd bind of a host (cert + daemon) vs a steady bind+unbind",
        "-",
        float("inf"),
        first_tls,
        ours["nbd-tls"],
        status="INFO",
    )
    first.notes.append(
        f"a host's first bind on a TCP nbd endpoint took {first_tls * 1e3:.0f} ms "
        f"(steady bind+unbind {ours['nbd-tls'] * 1e3:.1f} ms)"
    )
    results.append(first)
    file_row = Result(
        "bind+unbind file (no daemon to compare)",
        "-",
        float("inf"),
        ours["file"],
        None,
        status="INFO",
    )
    results.append(file_row)
    for p in PROTOCOLS:
        batch, single = batches[p]
        row = Result(
            f"batch bind {BATCH} {p}: per vvol vs single binds",
            "ratio <= 0.33 (3x)",
            1 / 3,
            batch,
            single,
        ).finish()
        row.notes.append(
            f"batch bind {p}: {batch * 1e3:.2f} ms per vvol in one call, "
            f"{single * 1e3:.2f} ms per single bind ({single / batch:.1f}x)"
        )
        results.append(row)
    return results
