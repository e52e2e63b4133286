"""RBD arrays against the obvious ways to do the same with Ceph's own tools, on a
private single-node cluster started for the run:

- snapshot and linked clone of a 4 GiB vvol holding 1 GiB, against a copy of
  the image (``rbd export`` + ``rbd import``): goal ratio <= 0.02;
- revert to an older snapshot (a clone of it becomes the vvol's data), against
  ``rbd snap rollback`` of an image holding the same data: goal <= 0.1;
- ``vvol bitmap --base`` between two snapshots, against ``rbd diff
  --from-snap`` (the CLI, JSON output): goal <= 1.0.

Every result's data is checked: a digest of what the image holds (read through
librbd, allocated extents only) must equal the source's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from vvhost.cephlab import CephLab
from vvhost.client import Client

from .common import (
    GiB,
    MiB,
    Result,
    check,
    fill_block,
    median,
    private_dir,
    server,
    timed,
)

VVOL_SIZE = "4G"
WRITTEN = 1 * GiB
REWRITE = 64 * MiB
BLOCK = 4 * MiB


class Cluster:
    """Admin access to the bench cluster: images by their ``pool/ns/image@snap``."""

    def __init__(self, lab: CephLab) -> None:
        self.lab = lab

    def rbd_cli(self, *args: str) -> str:
        cmd = ["rbd", "-c", self.lab.conf, "--keyring", self.lab.admin_keyring, *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    @contextmanager
    def image(self, where: str, writable: bool = False) -> Iterator[Any]:
        import rados
        import rbd

        spec, _, snap = where.partition("@")
        parts = spec.split("/")
        pool, ns, name = (parts[0], "", parts[1]) if len(parts) == 2 else parts
        with rados.Rados(conffile=self.lab.conf, conf={"keyring": self.lab.admin_keyring}) as r:
            with r.open_ioctx(pool) as ioctx:
                ioctx.set_namespace(ns)
                with rbd.Image(ioctx, name, snapshot=snap or None, read_only=not writable) as img:
                    yield img

    def write_spread(self, where: str, total: int, seed: int, offset: int = 0) -> None:
        """``total`` bytes in 4 MiB blocks, every other block, from ``offset``."""
        with self.image(where, writable=True) as img:
            for i in range(total // BLOCK):
                img.write(fill_block(seed, i), offset + 2 * i * BLOCK)
            img.flush()

    def digest(self, where: str) -> str:
        """SHA-256 over (offset, data) of every non-zero 4 MiB block the image maps."""
        h = hashlib.sha256()
        with self.image(where) as img:
            size = img.size()
            extents: list[tuple[int, int]] = []
            img.diff_iterate(0, size, None, lambda o, n, e: extents.append((o, n)) if e else None)
            seen: set[int] = set()
            zero = bytes(BLOCK)
            for off, n in sorted(extents):
                for block in range(off - off % BLOCK, off + n, BLOCK):
                    if block in seen:
                        continue
                    seen.add(block)
                    data = bytes(img.read(block, min(BLOCK, size - block)))
                    if data != zero[: len(data)]:
                        h.update(block.to_bytes(8, "little") + data)
        return h.hexdigest()


def run(reps: int = 3) -> list[Result]:
    with private_dir("rbd") as tmp, CephLab(os.path.join(tmp, "ceph")) as lab:
        lab.create_pool("bench")
        cl = Cluster(lab)
        with server(os.path.join(tmp, "state")) as (_proc, c):
            c.array_add(
                "ceph", "rbd", {"pool": "bench", "conf": lab.conf, "keyring": lab.admin_keyring}
            )
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
                _revert(cl, c, base, digest, reps),
                _bitmap(cl, c, base, reps),
            ]
            return results


def _export_import(cl: Cluster, where: str, scratch: str, dst: str) -> None:
    """The obvious copy: export the image to a file, import it as a new image."""
    dump = os.path.join(scratch, "export.raw")
    cl.rbd_cli("export", "--no-progress", where, dump)
    cl.rbd_cli("import", "--no-progress", dump, dst)
    os.unlink(dump)


def _vs_copy(
    cl: Cluster,
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
            seconds, _ = timed(lambda c=copy: _export_import(cl, base["where"], scratch, c))
            if rep < 0:
                check(cl.digest(copy) == digest, f"{res.name}: export+import made other data")
            else:
                theirs.append(seconds)
            cl.rbd_cli("rm", "--no-progress", copy)
    return _finish(res, ours, theirs, "export+import")


def _revert(cl: Cluster, c: Client, base: dict[str, Any], digest: str, reps: int) -> Result:
    """Each round changes 64 MiB of the vvol (and of a twin image), then goes back."""
    res = Result("rbd: revert", "ratio <= 0.1", 0.1)
    pool = base["where"].split("/")[0]
    c.vvol_snapshot("base", name="s1")
    twin = f"{pool}/twin"
    with private_dir("rbd-twin") as scratch:
        _export_import(cl, base["where"], scratch, twin)
    cl.rbd_cli("snap", "create", f"{twin}@s1")
    ours: list[float] = []
    theirs: list[float] = []
    for rep in range(-1, reps):
        where = c.vvol("base")["where"]
        cl.write_spread(where, REWRITE, seed=100 + rep, offset=2 * MiB)
        seconds, _ = timed(lambda: c.vvol_revert("base", "s1"))
        if rep < 0:
            check(cl.digest(c.vvol("base")["where"]) == digest, "revert: the data differs")
            res.notes.append("rbd: revert: data checked after the revert")
        else:
            ours.append(seconds)
        cl.write_spread(twin, REWRITE, seed=100 + rep, offset=2 * MiB)
        seconds, _ = timed(lambda: cl.rbd_cli("snap", "rollback", "--no-progress", f"{twin}@s1"))
        if rep < 0:
            check(cl.digest(twin) == digest, "revert: rbd snap rollback made other data")
        else:
            theirs.append(seconds)
    cl.rbd_cli("snap", "purge", "--no-progress", twin)
    cl.rbd_cli("rm", "--no-progress", twin)
    return _finish(res, ours, theirs, "rbd snap rollback")


def _bitmap(cl: Cluster, c: Client, base: dict[str, Any], reps: int) -> Result:
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
