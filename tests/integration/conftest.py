"""Fixtures of the VM tests: the test guest (built once) and a lab per test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.vmlab import Lab, running_lab
from vvhost.guest import GuestImage, build_guest


@pytest.fixture(scope="session")
def guest() -> GuestImage:
    return build_guest()


@pytest.fixture
def lab(tmp_path: str, guest: GuestImage) -> Iterator[Lab]:
    with running_lab(str(tmp_path), guest) as lab:
        yield lab


@pytest.fixture(params=["xfs"])
def snaplab(request: pytest.FixtureRequest, tmp_path: str, guest: GuestImage) -> Iterator[Lab]:
    """On XFS the array snapshots by reflink: COW mode."""
    array_dir = None
    if request.param == "xfs":
        array_dir = tempfile.mkdtemp(dir=request.getfixturevalue("xfs_mount"))
    try:
        with running_lab(str(tmp_path), guest, array_dir) as lab:
            yield lab
    finally:
        if array_dir:
            shutil.rmtree(array_dir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """After a run of the crash point test: how many declared points passed."""
    from vvhost import faults

    marker = "test_crash_points.py::test_crash_point["
    ran = [
        r
        for key in ("passed", "failed", "error")
        for r in terminalreporter.stats.get(key, [])
        if marker in getattr(r, "nodeid", "") and getattr(r, "when", "call") == "call"
    ]
    if ran:
        passed = {r.nodeid for r in ran if r.passed}
        terminalreporter.write_line(
            f"crash points covered: {len(passed)} of {len(faults.points())}"
        )
