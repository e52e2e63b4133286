"""The VM-operation kernel's tables: every pending record has a recovery function,
records survive the trip through the config document, and the operations reach
each other only through the kernel (no imports between them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vvhost.host import pending, vmop

HOST = Path(vmop.__file__).parent


def test_every_pending_record_has_a_recovery_function() -> None:
    assert set(pending.RECORDS) == set(vmop.RECOVERY)
    for op in vmop.RECOVERY:
        assert callable(vmop.recovery_for(op)), op
    assert vmop.recovery_for("no-such-op") is None


@pytest.mark.parametrize(
    "rec",
    [
        pending.SnapshotRec("snapshot", point="s1", vvols=["vm.vda@s1"]),
        pending.RevertRec("revert", point="s1", safety={"vda": "vm.vda@safety-1"}),
        pending.DropRec("redo-drop", vvols=["a", "b"]),
        pending.RedoLayersRec("redo-snapshot", point="s1", vvols={"vda": "x"}, running=True),
        pending.RedoDeleteRec("redo-delete", point="s1", merges={"vda": ["c", "b"]}),
        pending.MoveRec("move-storage", stage=pending.MoveRec.RELEASE, container="c", old=["o"]),
    ],
)
def test_records_round_trip_through_the_document(rec: pending.Rec) -> None:
    assert pending.parse(rec.to_dict()) == rec
    assert pending.parse({**rec.to_dict(), "added-later": 1}) == rec


def test_nothing_pending_is_none() -> None:
    assert pending.parse(None) is None and pending.parse({}) is None


def _imports(module: str) -> set[str]:
    tree = ast.parse((HOST / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.add(node.module or "")
    return out


@pytest.mark.parametrize(
    ("module", "others"),
    [
        ("snapshots", {"redo", "movestorage", "vmsnapshots"}),
        ("redo", {"snapshots", "movestorage", "vmsnapshots"}),
        ("movestorage", {"snapshots", "redo", "vmsnapshots"}),
    ],
)
def test_operations_do_not_import_each_other(module: str, others: set[str]) -> None:
    assert not _imports(module) & others
    assert "snapshots" not in _imports("vmop") and "redo" not in _imports("vmop")
