"""Sizes, names, error rendering and the wire format of errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vvhost.errors import (
    ERRORS_BY_CODE,
    Busy,
    CapacityExceeded,
    InvalidInput,
    NotFound,
    VvhostError,
    from_wire,
)
from vvhost.units import MiB, check_name, human, parse_size


@pytest.mark.parametrize(
    "text,value",
    [
        ("1M", MiB),
        ("512M", 512 * MiB),
        ("10G", 10 << 30),
        ("1T", 1 << 40),
        ("1048576", MiB),
        ("2GiB", 2 << 30),
        (" 3g ", 3 << 30),
        (4 * MiB, 4 * MiB),
    ],
)
def test_sizes(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "0", "1000", "1.5G", "-1M", "12Q", "G", "1M1", "2P"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text)


@pytest.mark.parametrize(
    "text", ["١٢٣M", "۱۲M", "１２M", "²M", "1²", "12\u0663M", "1\n", "1M\n", "\u00a01M", "1" * 100]
)
def test_sizes_are_ascii_digits_only(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text)


@given(st.text(max_size=20))
def test_parse_size_never_crashes(text: str) -> None:
    try:
        value = parse_size(text)
    except InvalidInput as exc:
        assert "\n" not in str(exc)
    else:
        assert value > 0 and value % MiB == 0


@pytest.mark.parametrize("name", ["a", "disk0", "vm-1.disk@s1", "A:b+c_d"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a/b", "..", "a b", "x\n", "a" * 129, "é"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(name)


def test_human() -> None:
    assert (human(0), human(1536), human(1 << 30), human(3 * (1 << 40))) == (
        "0",
        "1.5K",
        "1G",
        "3T",
    )


def test_errors_render_from_template_and_travel() -> None:
    err = CapacityExceeded(container="pool", free=1, capacity=2, needed=3)
    assert str(err) == "container 'pool' has 1 bytes free of 2; 3 bytes are needed"
    assert (err.status, err.exit_code) == (507, 5)
    again = from_wire(err.to_dict(), 507)
    assert type(again) is CapacityExceeded and str(again) == str(err) and again.fields["free"] == 1
    assert type(from_wire({"code": "???", "message": "x"}, 500)) is ERRORS_BY_CODE["internal"]
    assert str(NotFound(kind="vvol", ref="x")) == "vvol 'x' not found"
    assert "operation" in str(Busy(ref="v", state="reverting", op="abc"))


def test_every_error_class_has_a_distinct_code_and_exit_class() -> None:
    classes = list(ERRORS_BY_CODE.values())
    assert len({c.code for c in classes}) == len(classes)
    assert all(issubclass(c, VvhostError) and 1 <= c.exit_code <= 7 for c in classes)


@pytest.mark.parametrize("portal", ["127.0.0.1:١٢٣٤", "127.0.0.1:３２６０", "host:²"])
def test_portals_take_ascii_digits_only(portal: str) -> None:
    from vvhost.service.endpoints import parse_portal

    with pytest.raises(InvalidInput):
        parse_portal(portal)
    assert parse_portal("127.0.0.1:3260") == "127.0.0.1:3260"


def test_initiator_names_take_ascii_digits_only() -> None:
    from vvhost.service.hosts import check_iqn

    with pytest.raises(InvalidInput):
        check_iqn("iqn.２０２６-11.test:h")
    assert check_iqn("iqn.2026-11.test:h") == "iqn.2026-11.test:h"
