"""Every crash point named in the code is declared in ``vvhost.faults`` and the
other way round, so the crash tests can enumerate them all."""

from __future__ import annotations

import pathlib
import re

import pytest

from vvhost import faults

ROOT = pathlib.Path(__file__).resolve().parents[2] / "vvhost"
CALL = re.compile(
    r"""(?:\bfault|ctx\.step\(\s*\w+,)\(?\s*["']([\w-]+)["']\s*,\s*["']([\w-]+)["']"""
)


def _named_in_code() -> set[tuple[str, str]]:
    found = set()
    for path in ROOT.rglob("*.py"):
        for op, step in CALL.findall(path.read_text()):
            found.add((op, step))
    return found


def test_every_point_named_in_code_is_declared() -> None:
    declared = {(p.op, p.step) for p in faults.points()}
    assert _named_in_code() - declared == set()


def test_every_declared_point_is_reached_by_a_call() -> None:
    named = _named_in_code()
    dynamic = {("snapshot", "copied"), ("clone", "copied")}  # ctx.fault(kind, "copied")
    missing = {(p.op, p.step) for p in faults.points()} - named - dynamic
    assert missing == set()


def test_an_undeclared_point_is_a_programming_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(faults.UnknownFaultPoint):
        faults.control_plane_fault(None, str(tmp_path), "create", "no-such-step")
    with pytest.raises(faults.UnknownFaultPoint):
        faults.host_fault("vm-snapshot", "no-such-step")
    faults.control_plane_fault("create:begin", str(tmp_path), "create", "file-created")
