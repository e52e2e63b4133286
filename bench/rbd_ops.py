"""RBD arrays against the obvious ways to do the same with Ceph's own tools, on a
private single-node cluster started for the run:

- snapshot and linked clone of a 4 GiB vvol holding 1 GiB, against a copy of
  the image (``rbd export`` + ``rbd import``): goal ratio <= 0.02;
- revert to an older snapshot (a clone of it becomes the vvol's data: the spare
  clone made after the previous revert to it, or one made on the way), against
  ``rbd snap rollback`` of an image holding the same data: goal <= 0.1; once
  more with the same data in a 64 GiB vvol (rollback visits every object of
  the image, the revert does not);
- ``vvol bitmap --base`` between two snapshots, against ``rbd diff
  --from-snap`` (the CLI, JSON output): goal <= 1.0.

Every result's data is checked: a digest of what the image holds (read through
librbd, allocated extents only) must equal the source's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from vvhost.client import Client

from .cephbench import Volumes, ceph_pool
from .common import GiB, MiB, Result, check, median, private_dir, server, timed

VVOL_SIZE = "4G"
BIG_SIZE = "64G"  # the same data in a bigger image: revert stays, rollback grows
WRITTEN = 1 * GiB
REWRITE = 64 * MiB


def run(reps: int = 3) -> list[Result]:
    with private_dir("rbd") as tmp, ceph_pool(tmp) as (lab, pool):
        cl = Volumes(lab)
        with server(os.path.join(tmp, "state")) as (_proc, c):
            settings = {"pool": pool, "conf": lab.conf, "keyring": lab.admin_keyring}
            c.array_add("ceph", "rbd", settings)
            c.container_create("bench", "1T", arrays=["ceph"])
            base = c.vvol_create("bench", VVOL_SIZE, name="base")
            cl.write_spread(base["where"], WRITTEN, seed=1)
            digest = cl.digest(base["where"])
            results = [
                _vs_copy(cl, c, "snapshot", lambda: c.vvol_snapshot("base"), base, digest, reps),
                _vs_copy(
                    cl,
                    c,
                    "linked clone",
                    lambda: c.vvol_clone("base", linked=True),
                    base,
                    digest,
                    reps,
                ),
                _revert(cl, c, "base", VVOL_SIZE, reps),
                _bitmap(cl, c, base, reps),
            ]
            big = c.vvol_create("bench", BIG_SIZE, name="big")
            cl.write_spread(big["where"], WRITTEN, seed=1)
            results.append(_revert(cl, c, "big", BIG_SIZE, reps))
            return results


def _export_import(cl: Volumes, where: str, scratch: str, dst: str) -> None:
    """The obvious copy: export the image to a file, import it as a new image."""
    dump = os.path.join(scratch, "export.raw")
    cl.rbd_cli("export", "--no-progress", where, dump)
    cl.rbd_cli("import", "--no-progress", dump, dst)
    os.unlink(dump)


def _vs_copy(
    cl: Volumes,
    c: Client,
    name: str,
    call: Callable[[], dict[str, Any]],
    base: dict[str, Any],
    digest: str,
    reps: int,
) -> Result:
    res = Result(f"rbd: {name}", "ratio <= 0.02", 0.02)
    pool = base["where"].split("/")[0]
    ours: list[float] = []
    theirs: list[float] = []
    with private_dir("rbd-copy") as scratch:
        for rep in range(-1, reps):
            seconds, made = timed(call)
            if rep < 0:
                check(cl.digest(made["where"]) == digest, f"{res.name}: the result's data differs")
                res.notes.append(f"{res.name}: data checked ({made['where']})")
            else:
                ours.append(seconds)
            c.vvol_delete(made["id"])
            copy = f"{pool}/copy-{rep + 1}"
            seconds, _ = timed(partial(_export_import, cl, base["where"], scratch, copy))
            if rep < 0:
                check(cl.digest(copy) == digest, f"{res.name}: export+import made other data")
            else:
                theirs.append(seconds)
            cl.rbd_cli("rm", "--no-progress", copy)
    return _finish(res, ours, theirs, "export+import")


def _revert(cl: Volumes, c: Client, name: str, size: str, reps: int) -> Result:
    """Each round changes 64 MiB of the vvol (and of a twin image holding the same
    data, with the same features), then goes back to snapshot s1."""
    res = Result(f"rbd: revert ({size} vvol)", "ratio <= 0.1", 0.1)
    vvol = c.vvol(name)
    digest = cl.digest(vvol["where"])
    s1 = c.vvol_snapshot(name, name=f"{name}-s1")["id"]
    twin = f"{vvol['where'].split('/')[0]}/twin-{name}"
    cl.rbd_cli("create", "--size", size, twin)
    cl.write_spread(twin, WRITTEN, seed=1)
    check(cl.digest(twin) == digest, f"{res.name}: the twin holds other data")
    cl.rbd_cli("snap", "create", f"{twin}@s1")
    ours: list[float] = []
    theirs: list[float] = []
    for rep in range(-1, reps):
        where = c.vvol(name)["where"]
        cl.write_spread(where, REWRITE, seed=100 + rep, offset=2 * MiB)
        seconds, _ = timed(lambda: c.vvol_revert(name, s1))
        if rep < 0:
            check(cl.digest(c.vvol(name)["where"]) == digest, f"{res.name}: the data differs")
            res.notes.append(f"{res.name}: data checked after the revert")
            res.notes.append(
                f"{res.name}: the first revert to s1 (no spare clone of it yet, so the "
                f"clone is made on the way): {seconds * 1e3:.0f} ms; the rounds after it "
                "take the spare made after the previous revert"
            )
        else:
            ours.append(seconds)
        cl.write_spread(twin, REWRITE, seed=100 + rep, offset=2 * MiB)
        seconds, _ = timed(lambda: cl.rbd_cli("snap", "rollback", "--no-progress", f"{twin}@s1"))
        if rep < 0:
            check(cl.digest(twin) == digest, f"{res.name}: rbd snap rollback made other data")
        else:
            theirs.append(seconds)
    cl.rbd_cli("snap", "purge", "--no-progress", twin)
    cl.rbd_cli("rm", "--no-progress", twin)
    shows = [timed(lambda: c.vvol(name))[0] for _ in range(3)]
    res.notes.append(
        f"{res.name}: of which the vvol's description alone (its space figures come from "
        f"diff_iterate over the image), as `vvol show`: {median(shows) * 1e3:.0f} ms"
    )
    return _finish(res, ours, theirs, "rbd snap rollback")


def _bitmap(cl: Volumes, c: Client, base: dict[str, Any], reps: int) -> Result:
    res = Result("rbd: bitmap --base", "ratio <= 1.0", 1.0)
    s_a = c.vvol_snapshot("base", name="b1")
    cl.write_spread(c.vvol("base")["where"], REWRITE, seed=7, offset=6 * MiB)
    s_b = c.vvol_snapshot("base", name="b2")
    image, _, snap_b = s_b["where"].partition("@")
    snap_a = s_a["where"].partition("@")[2]
    ours: list[float] = []
    theirs: list[float] = []
    cli = ["diff", "--format", "json", "--from-snap", snap_a, f"{image}@{snap_b}"]
    for rep in range(-1, reps):
        seconds, answer = timed(lambda: c.vvol_bitmap("b2", base="b1", chunk="4M"))
        if rep >= 0:
            ours.append(seconds)
        seconds, out = timed(lambda: cl.rbd_cli(*cli))
        if rep >= 0:
            theirs.append(seconds)
        else:
            theirs_bytes = sum(e["length"] for e in json.loads(out) if e["exists"] == "true")
            check(answer["bytes"] >= REWRITE, f"bitmap found {answer['bytes']} bytes changed")
            check(theirs_bytes >= REWRITE, f"rbd diff found {theirs_bytes} bytes changed")
            res.notes.append(
                f"rbd: bitmap: vvhost {answer['bytes']} bytes in {len(answer['ranges'])} "
                f"ranges, rbd diff {theirs_bytes} bytes; {REWRITE} written"
            )
    return _finish(res, ours, theirs, "rbd diff")


def _finish(res: Result, ours: list[float], theirs: list[float], alt: str) -> Result:
    res.measured, res.baseline = median(ours), median(theirs)
    res.samples = {"vvhost": ours, alt: theirs}
    res.notes.append(
        f"{res.name}: {len(ours)} rounds, vvhost {min(ours):.3f}-{max(ours):.3f} s, "
        f"{alt} {min(theirs):.3f}-{max(theirs):.3f} s"
    )
    return res.finish()
