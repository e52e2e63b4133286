"""Which endpoint a VM takes after move-storage (host/movepe.py)."""

from __future__ import annotations

from vvhost.host.movepe import fitting, same_kinds

OFFERED = [
    {"name": "file0", "protocol": "file", "arrays": ["d1"]},
    {"name": "iscsi0", "protocol": "iscsi", "arrays": ["d1", "r1"]},
    {"name": "nbd0", "protocol": "nbd", "arrays": ["d1", "r1"]},
    {"name": "rbd0", "protocol": "rbd", "arrays": ["r1"]},
    {"name": "rbd9", "protocol": "rbd", "arrays": []},  # another array's
]


def test_onto_rbd_the_hosts_protocol_then_the_most_direct_path() -> None:
    assert fitting(OFFERED, {"r1"}, None, None, "rbd", True) == ["rbd0", "nbd0", "iscsi0"]
    assert fitting(OFFERED, {"r1"}, None, None, "iscsi", True) == ["iscsi0", "rbd0", "nbd0"]
    assert fitting(OFFERED, {"r1"}, None, None, "file", True) == ["rbd0", "nbd0", "iscsi0"]


def test_onto_dir_takes_the_hosts_protocol() -> None:
    assert fitting(OFFERED, {"d1"}, None, None, "iscsi") == ["iscsi0", "nbd0", "file0"]
    assert fitting(OFFERED, {"d1"}, None, "file0", "iscsi")[0] == "file0"


def test_both_kinds_need_an_endpoint_serving_both() -> None:
    assert fitting(OFFERED, {"d1", "r1"}, None, None, "rbd", True) == ["nbd0", "iscsi0"]
    assert fitting(OFFERED, {"d1", "x"}, None, None, "iscsi") == []


def test_the_vms_own_endpoint_first_when_it_fits() -> None:
    assert fitting(OFFERED, {"d1"}, "nbd0", None, "iscsi")[0] == "nbd0"
    assert fitting(OFFERED, {"r1"}, "nbd0", None, "rbd", True)[0] == "nbd0"


def test_same_kinds() -> None:
    kinds = {"d1": "dir", "d2": "dir", "r1": "rbd"}
    assert same_kinds(kinds, {"d1"}, {"d2"})
    assert not same_kinds(kinds, {"d1"}, {"r1"})
    assert not same_kinds(kinds, {"d1", "r1"}, {"r1"})
