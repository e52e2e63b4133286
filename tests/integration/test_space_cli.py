"""Space through the ``vvhost`` command against a real ``vvhost serve`` on XFS:
figures with --json, ``vvol list --sort unique``, one-line refusals that leave
nothing changed, and ``vvol delete --deferred`` checked by ``audit``."""

from __future__ import annotations

import os
from typing import Any, cast

from tests.integration.test_cli import Cli
from tests.patterns import Patterns
from vvhost.daemon import ServerProcess

MiB = 1 << 20


def _one_line(out: Any, code: int, *words: str) -> None:
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_space_through_the_cli(xfs_mount: str, patterns: Patterns) -> None:
    tmp = os.path.join(xfs_mount, f"cli-{os.getpid()}")
    os.makedirs(tmp)
    server = ServerProcess(os.path.join(tmp, "state"), os.path.join(tmp, "s.sock")).start()
    try:
        cli = Cli(server.socket)
        made = cast(
            dict[str, Any],
            cli.json(
                "container", "create", "pool", "--capacity", "256M", "--overcommit", "2",
                "--reserve", "10%", "--alerts", "70,85",
            ),
        )  # fmt: skip
        assert (made["limit"], made["reserve"]) == (512 * MiB, 256 * MiB // 10)
        assert made["alerts"] == [0.7, 0.85]
        cli("vvol", "create", "--container", "pool", "--size", "384M", "--name", "d")
        d = cast(dict[str, Any], cli.json("vvol", "show", "d"))
        patterns.write(d["path"], "A", [i * MiB for i in range(16)], size=MiB)
        s1 = cast(dict[str, Any], cli.json("vvol", "snapshot", "d", "--name", "s1"))
        patterns.write(d["path"], "B", [i * MiB for i in range(8)], size=MiB)
        s2 = cast(dict[str, Any], cli.json("vvol", "snapshot", "d", "--name", "s2"))
        patterns.write(d["path"], "C", [i * MiB for i in range(4)], size=MiB)
        shown = cast(dict[str, Any], cli.json("container", "refresh", "pool"))
        assert shown["space"]["vvols"] == 3 and shown["space"]["allocated"] >= 16 * MiB
        rows = cast(list[dict[str, Any]], cli.json("vvol", "list", "--sort", "unique"))
        assert [r["unique"] for r in rows] == sorted((r["unique"] for r in rows), reverse=True)
        # s1 alone holds A of 0..8M (s2 and d have B or C there); s2 alone B of 0..4M
        by_name = {r["name"]: r for r in rows}
        assert by_name["s1"]["unique"] == 8 * MiB and by_name["s2"]["unique"] == 4 * MiB
        assert rows[0]["name"] == "s1"  # deleting it frees the most
        table = cli("vvol", "list", "--sort", "unique").stdout
        assert "UNIQUE" in table.splitlines()[0]

        # refusals: one line, exit 4 or 5, nothing changed
        _one_line(cli("container", "set", "pool", "--capacity", "128M", ok=False), 4, "shrink")
        _one_line(cli("vvol", "create", "--container", "pool", "--size", "200M", ok=False), 5)
        _one_line(cli("container", "set", "pool", "--reserve", "250M", ok=False), 4, "reserve")
        _one_line(cli("container", "set", "pool", "--alerts", "90,80", ok=False), 2, "alerts")
        again = cast(dict[str, Any], cli.json("container", "show", "pool"))
        assert (again["capacity"], again["reserve"]) == (256 * MiB, 256 * MiB // 10)
        _one_line(cli("vvol", "delete", "d", ok=False), 4, "snapshots")

        # deferred: gone from listings, freed with the last snapshot
        cli("vvol", "delete", "d", "--deferred")
        names = {r["name"] for r in cast(list[dict[str, Any]], cli.json("vvol", "list"))}
        assert names == {"s1", "s2"}
        assert cast(dict[str, Any], cli.json("audit"))["ok"]
        patterns.check(s1["path"], "A", [i * MiB for i in range(16)], size=MiB)
        patterns.check(s2["path"], "B", [i * MiB for i in range(8)], size=MiB)
        cli("vvol", "delete", "s1")
        assert os.path.exists(d["path"])
        cli("vvol", "delete", "s2")
        assert not os.path.exists(d["path"]) and not os.path.exists(s2["path"])
        final = cast(dict[str, Any], cli.json("container", "show", "pool"))
        assert (final["provisioned"], final["used"], final["vvols"]) == (0, 0, 0)
        assert cast(dict[str, Any], cli.json("audit"))["ok"]
    finally:
        server.stop()
