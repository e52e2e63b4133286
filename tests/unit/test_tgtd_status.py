"""tgtd's status codes, as tgt's ``enum tgtadm_errno`` numbers them (usr/tgtadm_error.h)."""

from __future__ import annotations

from vvhost.tools.tgtd_ipc import ERRORS

# number -> enum name, in tgt's order (1.0.30 and later, Debian 12's 1.0.85 included)
TGT_ENUM = [
    "SUCCESS", "UNKNOWN_ERR", "NOMEM", "NO_DRIVER", "NO_TARGET",
    "NO_LUN", "NO_SESSION", "NO_CONNECTION", "NO_BINDING", "TARGET_EXIST",
    "LUN_EXIST", "BINDING_EXIST", "ACL_EXIST", "ACL_NOEXIST", "USER_EXIST",
    "NO_USER", "TOO_MANY_USER", "INVALID_REQUEST", "OUTACCOUNT_EXIST", "TARGET_ACTIVE",
    "LUN_ACTIVE", "DRIVER_ACTIVE", "UNSUPPORTED_OPERATION", "UNKNOWN_PARAM", "PREVENT_REMOVAL",
]  # fmt: skip


def test_every_code_has_its_own_message() -> None:
    assert len(ERRORS) == len(TGT_ENUM) and len(set(ERRORS)) == len(ERRORS)
    meaning = dict(zip(TGT_ENUM, ERRORS, strict=True))
    assert meaning["NO_BINDING"] == "can't find the binding"
    assert meaning["TARGET_EXIST"] == "this target already exists"
    assert meaning["LUN_EXIST"] == "this logical unit number already exists"
    assert meaning["ACL_EXIST"] == "this access control rule already exists"
    assert meaning["ACL_NOEXIST"] == "this access control rule does not exist"
    assert meaning["TARGET_ACTIVE"] == "this target is still active"
    assert meaning["UNKNOWN_PARAM"] == "unknown parameter"
