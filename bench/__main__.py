"""``python -m bench [--only NAME ...] [--json FILE] [--reps N]``

Runs the benchmark groups and prints one table.  Exits 0 when every benchmark
produced a measurement (PASS or MISS alike: benchmarks report, they are not
tests), 1 when one crashed or its data check failed (ERROR).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable

from . import (
    binding,
    bitmap_diff,
    catalog_scale,
    convert,
    cow_ops,
    events,
    pg_catalog,
    rbd_ops,
    remote_api,
    replica_binds,
    replica_failover,
    space,
    vm_boot,
    vm_migrate,
    vm_move_storage,
    vm_snapshot,
)
from .common import Result, VerifyError, leftovers

GROUPS: dict[str, Callable[..., list[Result]]] = {
    "cow-xfs": cow_ops.run_xfs,
    "cow-ext4": cow_ops.run_ext4,
    "bitmap": bitmap_diff.run,
    "convert": convert.run,
    "catalog": catalog_scale.run,
    "catalog-pg": pg_catalog.run,
    "replica-binds": replica_binds.run,
    "replica-failover": replica_failover.run,
    "binding": binding.run,
    "remote": remote_api.run,
    "vm-boot": vm_boot.run,
    "vm-boot-rbd": vm_boot.run_rbd,
    "vm-snapshot": vm_snapshot.run,
    "vm-snapshot-rbd": vm_snapshot.run_rbd,
    "vm-migrate": vm_migrate.run,
    "vm-move-storage": vm_move_storage.run,
    "vm-move-storage-rbd": vm_move_storage.run_rbd,
    "rbd": rbd_ops.run,
    "events": events.run,
    "space-show": space.run_show,
    "space-unique": space.run_unique,
}


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.4f}" if ratio < 0.01 else f"{ratio:.3f}"


def table(results: list[Result]) -> str:
    head = ("benchmark", "vvhost", "alternative", "ratio", "target", "result")
    rows = [
        (
            r.name,
            fmt_time(r.measured),
            fmt_time(r.baseline),
            fmt_ratio(r.ratio),
            r.target,
            r.status,
        )
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(
            cell.ljust(w) if i in (0, 4, 5) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *rows]
    ]
    lines = [line.rstrip() for line in lines]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_group(name: str, reps: int | None) -> list[Result]:
    print(f"== {name} ...", flush=True)
    start = time.monotonic()
    try:
        results = GROUPS[name]() if reps is None else GROUPS[name](reps)
    except VerifyError as exc:  # the timings would mean nothing
        results = [Result(name, "-", 0.0, status="ERROR", notes=[f"{name}: check failed: {exc}"])]
    except Exception as exc:  # report, keep going with the other groups
        traceback.print_exc()
        results = [Result(name, "-", 0.0, status="ERROR", notes=[f"{name}: {exc!r}"])]
    for r in results:
        print(f"   {r.name}: {r.status} {fmt_ratio(r.ratio)}", flush=True)
    print(f"   ({time.monotonic() - start:.0f} s)", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=list(GROUPS),
        metavar="NAME",
        help=f"run only this group (repeatable): {', '.join(GROUPS)}",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--reps", type=int, help="timed rounds per measurement (default: 3; 5 for cow-ext4)"
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    results: list[Result] = []
    for name in args.only or list(GROUPS):
        results.extend(run_group(name, args.reps))
    elapsed = time.monotonic() - start

    print()
    print(table(results))
    print("vvhost/alternative: median wall time of the vvhost API call / of the obvious")
    print("alternative; for catalog rows, median latency at 10,000 vvols / at 100.")
    for r in results:
        for note in r.notes:
            print(f"  - {note}")
    print(f"total {elapsed:.0f} s")
    stray = leftovers()
    for line in stray:
        print(f"LEFTOVER mount or loop device: {line}")
    if not stray:
        print("no benchmark mounts or loop devices left behind")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"elapsed": elapsed, "results": [r.to_dict() for r in results]}, fh, indent=2)
    return 1 if stray or any(r.status == "ERROR" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
