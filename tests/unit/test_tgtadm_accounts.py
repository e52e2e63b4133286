"""What ``Tgtadm.show`` reads of a target's CHAP accounts (text as tgt 1.0.85 prints it)."""

from __future__ import annotations

import pytest

from vvhost.tools.tgtadm import Tgtadm, parse_show

SHOWN = """Target 1: iqn.2026-11.io.vvhost:iscsi1.h1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Backing store path: None
    Account information:
        h1.0a1b2c3d
        mutual (outgoing)
    ACL information:
        iqn.2026-11.test:h1
Target 2: iqn.2026-11.io.vvhost:iscsi1.shared
    System information:
        Driver: iscsi
    Account information:
    ACL information:
        ALL
"""


def test_show_reads_incoming_accounts_only() -> None:
    one, shared = parse_show(SHOWN)
    assert one.accounts == ["h1.0a1b2c3d"]  # the outgoing one is not an incoming account
    assert one.initiator_names == ["iqn.2026-11.test:h1"] and one.initiator_addresses == []
    assert shared.accounts == [] and shared.initiator_addresses == ["ALL"]


@pytest.mark.parametrize("user,password", [("a,b", "x" * 12), ("u", "p=q"), ("u", "with space")])
def test_account_values_that_would_break_the_parameter_string_are_refused(
    user: str, password: str
) -> None:
    tgt = Tgtadm(1, owner=lambda: -1)  # never reached: the values are checked first
    with pytest.raises(ValueError):
        tgt.account_new(user, password)
