"""Space figures: reading them must be cheap, and unique bytes must not need
reading the data.

``space-show``: ``container show`` (space sums) of a container holding 10,000
vvols against ``vvol list`` of the same container, both through a real
``vvhost serve`` over its unix socket (median of several calls each).  100
vvols are made through the API (10 of them written, their figures read from
the array by ``container refresh``); the other 9,900 rows are inserted through
the catalog's repository layer (``vvolrepo.insert`` and ``repo.reserve`` in
one transaction, figures included): creating them through the API would take
minutes and measures something else.  Check: the sums ``container show``
reports equal the sums of the listed rows.

``space-unique``: unique bytes of a snapshot of a 4 GiB vvol on XFS (reflink)
after the vvol overwrote 256 MiB of its 1 GiB of data: vvhost's ``container
refresh`` (FIEMAP of the vvol and the snapshot, through the server) against
reading both files and comparing them (page cache dropped first).  Check: the
snapshot's unique bytes equal the bytes the comparison found different.
"""

from __future__ import annotations

import os
import time
import uuid

from tests.fsfixtures import loop_capability, make_loop_fs
from vvhost.catalog import repo, vvolrepo
from vvhost.catalog.db import Database, sqlite_url
from vvhost.model import READY, Vvol

from .common import (
    GiB,
    MiB,
    Result,
    check,
    drop_caches,
    median,
    private_dir,
    server,
    skipped,
    timed,
)

ROWS = 10_000
API_MADE = 100
SHOW_TARGET, SHOW_LIMIT = "ratio <= 0.1", 0.1
UNIQUE_TARGET, UNIQUE_LIMIT = "ratio <= 0.05 (>= 20x)", 0.05
CONTAINER = "space"
VVOL_SIZE = 4 * GiB
WRITTEN = GiB
OVERWRITTEN = 256 * MiB
STEP = 4 * MiB


def _insert_rows(state: str, container_id: str, array_id: str, count: int) -> int:
    """Catalog rows for ``count`` 1 MiB vvols with figures; returns their charges."""
    db = Database(sqlite_url(os.path.join(state, "catalog.db")))
    total = 0
    try:
        with db.tx() as conn:
            for i in range(count):
                allocated = (i % 8) * 64 * 1024
                v = Vvol(
                    id=str(uuid.uuid4()),
                    name=f"row-{i:05d}",
                    type="data",
                    container=container_id,
                    array=array_id,
                    size=MiB,
                    parent=None,
                    relation=None,
                    readonly=False,
                    state=READY,
                    op=None,
                    generation=1,
                    refs=0,
                    created=time.time(),
                    allocated=allocated,
                    unique=allocated // 2,
                    charge=MiB,
                    held=allocated,
                )
                vvolrepo.insert(conn, v)
                total += v.charge
            check(repo.reserve(conn, container_id, total), "the bench container is too small")
    finally:
        db.close()
    return total


def run_show(reps: int = 3) -> list[Result]:
    res = Result(f"space: container show @{ROWS} vs vvol list", SHOW_TARGET, SHOW_LIMIT)
    with private_dir("space-show") as tmp, server(os.path.join(tmp, "state")) as (_proc, c):
        cont = c.container_create(CONTAINER, "1T")
        made = [c.vvol_create(CONTAINER, "4M", name=f"api-{i:03d}") for i in range(API_MADE)]
        for i, v in enumerate(made[:10]):
            with open(v["path"], "r+b") as fh:
                fh.write(os.urandom((i + 1) * 64 * 1024))
        _insert_rows(os.path.join(tmp, "state"), cont["id"], cont["arrays"][0], ROWS - API_MADE)
        c.container_refresh(CONTAINER)
        shows, lists = [], []
        listing: list[dict[str, object]] = []
        shown: dict[str, object] = {}
        for _ in range(max(reps, 3)):
            seconds, listing = timed(lambda: c.vvols(CONTAINER))
            lists.append(seconds)
            for _ in range(5):
                seconds, shown = timed(lambda: c.container(CONTAINER))
                shows.append(seconds)
        check(len(listing) == ROWS, f"vvol list gave {len(listing)} rows, expected {ROWS}")
        space = shown["space"]
        assert isinstance(space, dict)
        for key, column in (("provisioned", "charge"), ("allocated", "allocated")):
            listed = sum(int(r[column] or 0) for r in listing)  # type: ignore[call-overload]
            check(space[key] == listed, f"container {key} {space[key]} != listed sum {listed}")
        unique = sum(int(r["unique"] or 0) for r in listing)  # type: ignore[call-overload]
        check(space["unique"] == unique, f"container unique {space['unique']} != {unique}")
        check(space["vvols"] == ROWS, f"container counts {space['vvols']} vvols")
        check(space["allocated"] > 0, "no figures were read from the array")
    res.measured, res.baseline = median(shows), median(lists)
    res.samples = {"container_show": shows, "vvol_list": lists}
    res.notes = [f"space: {API_MADE} vvols made through the API, {ROWS - API_MADE} rows inserted"]
    return [res.finish()]


def _write(path: str, offset: int, total: int, seed: int) -> None:
    block = (bytes([seed]) * 4096 + os.urandom(4096)) * (STEP // 8192)
    with open(path, "r+b") as fh:
        for off in range(offset, offset + total, STEP):
            fh.seek(off)
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())


def _differing(a: str, b: str) -> int:
    """The alternative: read both files whole, count the bytes that differ (per 4 KiB)."""
    diff = 0
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            x, y = fa.read(STEP), fb.read(STEP)
            if not x and not y:
                return diff
            if x != y:
                for k in range(0, max(len(x), len(y)), 4096):
                    if x[k : k + 4096] != y[k : k + 4096]:
                        diff += 4096


def run_unique(reps: int = 3) -> list[Result]:
    name = "space: unique bytes of a 4 GiB snapshot (XFS) vs read+compare"
    reason = loop_capability("xfs")
    if reason:
        return [skipped(name, UNIQUE_TARGET, UNIQUE_LIMIT, reason)]
    res = Result(name, UNIQUE_TARGET, UNIQUE_LIMIT)
    with private_dir("space-unique") as tmp, make_loop_fs(tmp, "xfs", "8G") as mnt:
        with server(os.path.join(tmp, "state")) as (_proc, c):
            c.array_add("xfs", "dir", os.path.join(mnt, "array"))
            c.container_create(CONTAINER, "16G", arrays=["xfs"])
            base = c.vvol_create(CONTAINER, "4G", name="base")
            _write(base["path"], 0, WRITTEN, seed=1)
            snap = c.vvol_snapshot("base", name="snap")
            _write(base["path"], 512 * MiB, OVERWRITTEN, seed=2)
            ours, theirs = [], []
            found = compared = -1
            for _ in range(reps):
                drop_caches()
                seconds, _ = timed(lambda: c.container_refresh(CONTAINER))
                ours.append(seconds)
                found = int(c.vvol(snap["id"])["unique"])
                drop_caches()
                seconds, compared = timed(lambda: _differing(base["path"], snap["path"]))
                theirs.append(seconds)
            check(found == OVERWRITTEN, f"vvhost found {found} unique bytes, not {OVERWRITTEN}")
            check(compared == found, f"comparison found {compared} bytes differ, vvhost {found}")
            c.vvol_delete(snap["id"])
            c.vvol_delete("base")
    res.measured, res.baseline = median(ours), median(theirs)
    res.samples = {"vvhost_refresh": ours, "read_compare": theirs}
    res.notes = [f"space: snapshot unique {found} bytes, read+compare found {compared}"]
    return [res.finish()]
