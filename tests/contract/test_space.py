"""Thin provisioning and space accounting, against the control plane on ext4
(copies), XFS (reflink: FIEMAP tells shared from unique) and RBD (fast-diff),
in-process and through a real ``vvhost serve``."""

from __future__ import annotations

import pytest

from tests.patterns import Patterns
from vvhost.client import Client
from vvhost.errors import CapacityExceeded, HasDependants, InUse, NotFound, ReserveReached
from vvhost.host.vmspace import vm_space

MiB = 1 << 20
BIG = MiB  # pattern chunk used here: 1 MiB


def _offsets(first_mib: int, count: int) -> list[int]:
    return [(first_mib + i) * MiB for i in range(count)]


def _audit_ok(api: Client) -> None:
    report = api.audit()
    assert report["ok"], report["problems"]


def _instant(api: Client) -> bool:
    return bool(api.arrays()[0]["capabilities"].get("instant"))


def test_three_snapshots_of_a_half_full_container(api: Client, patterns: Patterns) -> None:
    """1 GiB container, a 512 MiB vvol with 128 MiB written: it takes a second and a
    third snapshot (charged their unique bytes, not 512 MiB each)."""
    api.container_create("pool", "1G", reserve="5%")
    v = api.vvol_create("pool", "512M", name="d")
    patterns.write(v, "A", _offsets(0, 128), size=BIG)
    snaps = [api.vvol_snapshot("d", name=f"s{i}") for i in range(3)]
    for s in snaps:
        patterns.check(s, "A", _offsets(0, 128), size=BIG)
    shown = api.container_refresh("pool")
    instant = _instant(api)
    # the base: its size against the limit, its 128 MiB against the capacity
    base = api.vvol("d")
    assert base["provisioned"] == 512 * MiB and base["charge"] == 512 * MiB
    assert base["allocated"] >= 128 * MiB
    snap_rows = [api.vvol(s["id"]) for s in snaps]
    if instant:
        assert all(s["unique"] == 0 and s["charge"] == 0 for s in snap_rows)
        assert shown["provisioned"] == 512 * MiB
    else:  # copies: each snapshot holds its own 128 MiB
        assert all(s["unique"] >= 128 * MiB for s in snap_rows)
        assert shown["provisioned"] == 512 * MiB + sum(s["charge"] for s in snap_rows)
    assert shown["provisioned"] == sum(x["charge"] for x in [base, *snap_rows])
    assert shown["used"] == sum(x["held"] for x in [base, *snap_rows])
    assert shown["space"]["allocated"] == sum(x["allocated"] for x in [base, *snap_rows])

    # the base diverges by 32 MiB: the old data stays in all three snapshots
    used_before = shown["used"]
    patterns.write(v, "B", _offsets(0, 32), size=BIG)
    shown = api.container_refresh("pool")
    newest = api.vvol(snaps[-1]["id"])
    if instant:  # XFS and RBD: counted once, by the newest holder
        assert all(api.vvol(s["id"])["unique"] == 0 for s in snaps)  # shared by all three
        assert newest["held"] == 32 * MiB
        assert shown["used"] == used_before + 32 * MiB
    # the older snapshots go: the newest alone holds what the base overwrote
    for s in snaps[:-1]:
        api.vvol_delete(s["id"])
    api.container_refresh("pool")
    newest = api.vvol(snaps[-1]["id"])
    expected = 32 * MiB if instant else 128 * MiB
    assert newest["unique"] == expected and newest["charge"] == expected
    rows = api.vvols("pool")
    assert max(int(r["unique"] or 0) for r in rows) == expected
    # data checked after all of it
    patterns.check(v, "B", _offsets(0, 32), size=BIG)
    patterns.check(v, "A", _offsets(32, 96), size=BIG)
    patterns.check(snaps[-1], "A", _offsets(0, 128), size=BIG)
    api.vvol_delete(snaps[-1]["id"])
    api.vvol_delete("d")
    after = api.container("pool")
    assert (after["provisioned"], after["used"], after["vvols"]) == (0, 0, 0)
    _audit_ok(api)


def test_overcommit_limits_and_container_set(api: Client) -> None:
    c = api.container_create("pool", "64M")
    assert (c["overcommit"], c["limit"]) == (1.0, 64 * MiB)
    api.vvol_create("pool", "64M", name="a")
    with pytest.raises(CapacityExceeded):
        api.vvol_create("pool", "1M")  # default 1.0: today's rule for writable vvols
    shown = api.container_set("pool", overcommit="2.5")
    assert shown["limit"] == 160 * MiB and shown["free"] == 96 * MiB
    api.vvol_create("pool", "96M", name="b")
    with pytest.raises(CapacityExceeded):
        api.vvol_extend("b", "97M")
    with pytest.raises(InUse, match="cannot shrink"):
        api.container_set("pool", overcommit="2.0")  # 160M are provisioned
    with pytest.raises(InUse, match="cannot shrink"):
        api.container_set("pool", capacity="32M")
    unchanged = api.container("pool")
    assert (unchanged["capacity"], unchanged["overcommit"]) == (64 * MiB, 2.5)
    grown = api.container_set("pool", capacity="128M", overcommit="1.25")
    assert grown["limit"] == 160 * MiB and grown["free"] == 0
    api.vvol_delete("a")
    api.vvol_delete("b")
    _audit_ok(api)


def test_reserve_refuses_snapshots_and_clones(api: Client, patterns: Patterns) -> None:
    api.container_create("pool", "64M", overcommit="4", reserve="50%")
    v = api.vvol_create("pool", "128M", name="d")
    patterns.write(v, "A", _offsets(0, 40), size=BIG)
    shown = api.container_refresh("pool")
    assert shown["used"] >= 40 * MiB and shown["reserve"] == 32 * MiB
    with pytest.raises(ReserveReached) as refused:
        api.vvol_snapshot("d")
    assert refused.value.fields["container"] == "pool"
    assert "keeps" in refused.value.message and "\n" not in refused.value.message
    with pytest.raises(ReserveReached):
        api.vvol_clone("d", linked=False)
    assert [r["name"] for r in api.vvols("pool")] == ["d"]  # nothing half-made
    api.container_set("pool", capacity="128M", reserve="4M")  # room for a copy too
    s = api.vvol_snapshot("d")
    patterns.check(s, "A", _offsets(0, 40), size=BIG)
    api.vvol_delete(s["id"])
    api.vvol_delete("d")
    _audit_ok(api)


def test_deferred_delete_frees_with_the_last_dependant(api: Client, patterns: Patterns) -> None:
    api.container_create("pool", "1G")
    v = api.vvol_create("pool", "32M", name="d")
    patterns.write(v, "A", _offsets(0, 8), size=BIG)
    s = api.vvol_snapshot("d", name="s")
    clone = api.vvol_clone(s["id"], linked=True, name="c")
    with pytest.raises(HasDependants):
        api.vvol_delete("d")
    api.vvol_delete("d", deferred=True)
    assert "d" not in {r["name"] for r in api.vvols("pool")}
    with pytest.raises(NotFound):
        api.vvol("d")  # by name: gone
    assert api.vvol(v["id"])["state"] == "deferred"  # by id: still there, waiting
    _audit_ok(api)
    patterns.check(s, "A", _offsets(0, 8), size=BIG)
    patterns.check(clone, "A", _offsets(0, 8), size=BIG)
    api.vvol_delete("s", deferred=True)  # waits for the clone in turn
    assert {r["name"] for r in api.vvols("pool")} == {"c"}
    _audit_ok(api)
    patterns.check(clone, "A", _offsets(0, 8), size=BIG)
    api.vvol_delete("c")  # the last dependant: the snapshot, then the base go too
    for gone in (v, s, clone):
        with pytest.raises(NotFound):
            api.vvol(gone["id"])
    assert not patterns.exists(v)
    after = api.container("pool")
    assert (after["provisioned"], after["used"], after["vvols"]) == (0, 0, 0)
    _audit_ok(api)


def test_vm_space_sums_disks_and_snapshots(api: Client, patterns: Patterns) -> None:
    api.container_create("pool", "1G")
    a = api.vvol_create("pool", "16M", name="a")
    b = api.vvol_create("pool", "32M", name="b")
    patterns.write(a, "A", _offsets(0, 4), size=BIG)
    api.vvol_snapshot("a")
    patterns.write(a, "B", _offsets(0, 2), size=BIG)
    api.container_refresh("pool")
    space = vm_space(api, [a["id"], b["id"]])
    assert space["provisioned"] == 48 * MiB
    assert space["allocated"] >= 4 * MiB
    assert space["snapshots_unique"] >= (2 * MiB if _instant(api) else 4 * MiB)
    assert set(space["disks"]) == {a["id"], b["id"]}
