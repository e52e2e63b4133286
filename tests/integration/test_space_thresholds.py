"""Usage crossing 80 % and 90 % of a container is reported once per rising edge,
from admission (provisioning) and from refreshed figures (guests' writes), to
a ``capacity.threshold`` event and to ``SpaceOps.on_threshold``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.patterns import Patterns
from vvhost.catalog import spacerepo
from vvhost.errors import InvalidInput
from vvhost.service import Config, Service
from vvhost.service.tenancy import UNIX_ADMIN

MiB = 1 << 20


@pytest.fixture
def svc(tmp_path: str) -> Iterator[Service]:
    s = Service(Config(state_dir=os.path.join(tmp_path, "state"), space_refresh=0))
    s.start()
    try:
        yield s
    finally:
        s.close()


def test_thresholds_from_admission_and_refresh(svc: Service, patterns: Patterns) -> None:
    seen: list[tuple[str, float, float]] = []
    svc.space.on_threshold = lambda name, level, fraction: seen.append((name, level, fraction))
    svc.containers.create("pool", "100M", overcommit="4")
    svc.vvols.create("pool", "300M", name="a")  # 75 % of 400M provisioned
    assert seen == []
    svc.vvols.create("pool", "24M", name="b")  # 81 %
    assert [(n, lv) for n, lv, _ in seen] == [("pool", 0.8)]
    svc.vvols.create("pool", "4M")  # 82 %: no new crossing
    assert len(seen) == 1
    # the physical side: 92 MiB written into "a", seen by a refresh
    a = svc.vvols.show("a")
    patterns.write(a["path"], "A", [i * MiB for i in range(92)], size=MiB)
    svc.space.refresh_container("pool")
    assert [(n, lv) for n, lv, _ in seen] == [("pool", 0.8), ("pool", 0.9)]
    assert seen[-1][2] >= 0.92
    events = [e for e in svc.ctx.events.read(UNIX_ADMIN)["events"] if e["kind"].startswith("cap")]
    assert [(e["subject"], e["severity"], e["fields"]["level"]) for e in events] == [
        ("container:pool", "warning", 0.8),
        ("container:pool", "error", 0.9),
    ]
    shown = svc.containers.show("pool")
    assert shown["used"] >= 92 * MiB and shown["space"]["fraction"] >= 0.92


def test_a_containers_own_alert_levels(svc: Service) -> None:
    """``--alerts 50,75``: events at those levels (the last one critical), health
    judged by them too; bad levels are refused in one line."""
    svc.containers.create("pool", "100M", alerts="50,75")
    assert list(svc.containers.show("pool")["alerts"]) == [0.5, 0.75]
    svc.vvols.create("pool", "60M", name="a")  # 60 %
    item = next(i for i in svc.health(600.0)["items"] if i["name"] == "pool")
    assert item["status"] == "warning"
    svc.vvols.create("pool", "20M", name="b")  # 80 %
    item = next(i for i in svc.health(600.0)["items"] if i["name"] == "pool")
    assert item["status"] == "critical"
    events = [e for e in svc.ctx.events.read(UNIX_ADMIN)["events"] if e["kind"].startswith("cap")]
    assert [(e["severity"], e["fields"]["level"]) for e in events] == [
        ("warning", 0.5),
        ("error", 0.75),
    ]
    svc.containers.set("pool", alerts="90")
    assert list(svc.containers.show("pool")["alerts"]) == [0.9]
    item = next(i for i in svc.health(600.0)["items"] if i["name"] == "pool")
    assert item["status"] == "ok"
    with pytest.raises(InvalidInput):
        svc.containers.set("pool", alerts="95,90")
    assert list(svc.containers.show("pool")["alerts"]) == [0.9]


def test_background_refresh_reads_the_oldest_figures(svc: Service, patterns: Patterns) -> None:
    """What ``vvhost serve``'s refresher runs: guests' writes show up without any
    operation, and a vvol whose array cannot answer does not block the others."""
    svc.containers.create("pool", "1G")
    a = svc.vvols.create("pool", "16M", name="a")
    b = svc.vvols.create("pool", "16M", name="b")
    patterns.write(a["path"], "A", [0, MiB], size=MiB)
    patterns.write(b["path"], "B", [0], size=MiB)
    os.unlink(b["path"])  # its array cannot tell any more
    assert svc.space.refresh_stale(max_age=0.0, limit=10) == 1
    assert svc.vvols.show("a")["allocated"] >= 2 * MiB
    assert svc.containers.show("pool")["allocated"] >= 2 * MiB
    with svc.ctx.db.tx() as conn:  # both were looked at: neither is first in line now
        assert [s.id for s in spacerepo.stale(conn, 0.0, 10)] == []
