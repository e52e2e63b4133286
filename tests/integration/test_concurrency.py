"""Many clients at once over the unix socket must not corrupt the catalog:
8 workers create, snapshot, clone, revert and delete in parallel, some of them
on one shared vvol; afterwards every count and every byte is where it should be."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from tests.patterns import CHUNK, Patterns
from vvhost.daemon import ServerProcess

WORKERS = 8
ROUNDS = 4


def test_parallel_clients_keep_the_catalog_exact(tmp_path: str, patterns: Patterns) -> None:
    server = ServerProcess(
        os.path.join(tmp_path, "state"), os.path.join(tmp_path, "s.sock")
    ).start()
    try:
        admin = server.client()
        admin.container_create("pool", "64G")
        shared = admin.vvol_create("pool", "8M", name="shared")
        patterns.write(shared["path"], "S", [0, CHUNK])

        def worker(n: int) -> list[str]:
            client = server.client()
            snaps_of_shared = []
            try:
                v = client.vvol_create("pool", "8M", name=f"w{n}")
                for r in range(ROUNDS):
                    patterns.write(v["path"], f"w{n}r{r}", [r * CHUNK])
                    client.vvol_snapshot(v["id"], name=f"w{n}@r{r}")
                    snaps_of_shared.append(client.vvol_snapshot("shared")["id"])
                    clone = client.vvol_clone(f"w{n}@r{r}", linked=True)
                    client.vvol_delete(clone["id"])
                client.vvol_revert(v["id"], f"w{n}@r1")
                client.vvol_meta("shared", [f"w{n}=done"])  # waits for snapshots in flight
                patterns.check(v["path"], f"w{n}r0", [0])
                patterns.check(v["path"], f"w{n}r1", [CHUNK])
                with open(v["path"], "rb") as fh:
                    fh.seek(2 * CHUNK)
                    assert fh.read(CHUNK) == b"\0" * CHUNK  # r2 came after the reverted-to point
                return snaps_of_shared
            finally:
                client.close()

        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(worker, range(WORKERS)))

        taken = [s for r in results for s in r]
        assert len(set(taken)) == WORKERS * ROUNDS
        final = admin.vvol("shared")
        assert sorted(final["snapshots"]) == sorted(taken)
        assert final["refs"] == WORKERS * ROUNDS
        assert final["metadata"] == {f"w{n}": "done" for n in range(WORKERS)}
        for snap in taken[:3]:
            patterns.check(admin.vvol(snap)["path"], "S", [0, CHUNK])
        vvols = admin.vvols()
        assert len(vvols) == 1 + WORKERS * ROUNDS + WORKERS + WORKERS * ROUNDS
        expected = sum(v["charge"] for v in vvols)  # snapshots: their unique bytes
        assert admin.container("pool")["provisioned"] == expected
        report = admin.audit()
        assert report["ok"], report["problems"]
        admin.close()
    finally:
        server.stop()
