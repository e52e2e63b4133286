"""Pieces of the Ceph lab and the librados wrapper that need no cluster."""

from __future__ import annotations

import base64
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vvhost import labpids
from vvhost.cephlab import _not_ready, new_key
from vvhost.errors import ERRORS_BY_CODE, CephDenied, CephUnreachable, from_wire
from vvhost.tools.ceph import entity_addr, rbd_caps


def test_new_key_has_the_cephx_layout() -> None:
    raw = base64.b64decode(new_key())
    kind, _sec, _nsec, length = struct.unpack("<HIIH", raw[:12])
    assert (kind, length, len(raw)) == (1, 16, 28)
    assert new_key() != new_key()


def test_rbd_caps_name_every_namespace() -> None:
    caps = rbd_caps("vv", ["t1", "t2"])
    assert caps == {
        "mon": "profile rbd",
        "osd": "profile rbd pool=vv namespace=t1, profile rbd pool=vv namespace=t2",
    }


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("127.0.0.1:0/123", "127.0.0.1:0/123"),
        ("[v2:10.0.0.1:6800/9,v1:10.0.0.1:6801/9]", "10.0.0.1:6800/9"),
        ("v1:10.0.0.1:6801/9", "10.0.0.1:6801/9"),
    ],
)
def test_blocklist_takes_one_entity_address(given: str, want: str) -> None:
    assert entity_addr(given) == want


def _status(health: str = "HEALTH_OK", clean: int = 9, total: int = 9) -> dict[str, object]:
    return {
        "health": {"status": health, "checks": {} if health == "HEALTH_OK" else {"X": {}}},
        "osdmap": {"num_up_osds": 1, "num_in_osds": 1},
        "mgrmap": {"available": True},
        "pgmap": {
            "num_pgs": total,
            "pgs_by_state": [
                {"state_name": "active+clean", "count": clean},
                {"state_name": "creating", "count": total - clean},
            ],
        },
    }


def test_ready_means_healthy_with_every_pg_clean() -> None:
    assert _not_ready(_status(), 9) == ""
    assert _not_ready(_status(health="HEALTH_WARN"), 9).startswith("HEALTH_WARN")
    assert _not_ready(_status(health="HEALTH_WARN"), 9, healthy=False) == ""
    assert _not_ready(_status(clean=8), 9) == "8 of 9 PGs active+clean"
    assert _not_ready(_status(), 17) == "9 of 17 PGs reported"  # a new pool not counted yet
    no_osd = _status()
    no_osd["osdmap"] = {"num_up_osds": 0, "num_in_osds": 1}
    assert "OSD" in _not_ready(no_osd, 9)


def test_ceph_errors_survive_the_wire() -> None:
    err = CephDenied(cluster="/x/ceph.conf", user="client.h1", detail="permission denied", errno=13)
    back = from_wire(err.to_dict(), 403)
    assert isinstance(back, CephDenied) and str(back) == str(err)
    assert ERRORS_BY_CODE["ceph-unreachable"] is CephUnreachable
    assert (CephUnreachable.exit_code, CephDenied.exit_code) == (6, 6)


def test_reap_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    """A pid file whose PID now runs another command line is dropped, the process kept."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "pids").mkdir()
        (tmp_path / "pids" / "osd.0.pid").write_text(
            f"{other.pid}\nceph-osd -f -i 0 -c {tmp_path}/ceph.conf\n1 0\n"
        )
        assert labpids.reap(str(tmp_path)) == []
        assert other.poll() is None
        assert list((tmp_path / "pids").iterdir()) == []
    finally:
        other.kill()
        other.wait()


def test_reap_stops_a_recorded_process(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    (tmp_path / "pids").mkdir()
    proc = labpids.spawn(str(tmp_path / "pids"), "x", argv, str(tmp_path / "x.out"), str(tmp_path))
    try:
        # the owner (this process) is alive: reap_orphans keeps the lab
        assert labpids.reap_orphans([str(tmp_path)]) == []
        assert proc.poll() is None
        assert labpids.reap(str(tmp_path), grace=5) == [proc.pid]
        assert proc.wait(timeout=5) == -15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
