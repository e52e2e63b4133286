"""Datastore ids in the form of array LUN ids: NAA type 6 ("IEEE Registered
Extended"), as SCSI VPD page 0x83 reports them, written ``naa.`` + 32 hex digits::

    naa. 6  OOOOOO  IIIIIIIII  SSSSSSSSSSSSSSSS
         |  |       |          '-- 64-bit counter, never reused (catalog sequence)
         |  |       '------------- 36 bits chosen once per installation
         |  '--------------------- 24-bit IEEE OUI (configurable)
         '------------------------ NAA type 6

so an id is "naa.6" followed by 31 lowercase hex digits, like the ids arrays give LUNs.
"""

from __future__ import annotations

import re

from .errors import InvalidInput

NAA_RE = re.compile(r"naa\.6[0-9a-f]{31}")
OUI_RE = re.compile(r"[0-9a-fA-F]{6}")
DEFAULT_OUI = "0c7a5e"  # set your organisation's OUI with VVHOST_OUI


def make_naa(oui: str, installation: int, counter: int) -> str:
    if not OUI_RE.fullmatch(oui):
        raise InvalidInput(detail=f"OUI {oui!r} is not 6 hex digits")
    if not 0 <= installation < 1 << 36 or not 0 < counter < 1 << 64:
        raise InvalidInput(detail="NAA vendor-specific part out of range")
    return f"naa.6{oui.lower()}{installation:09x}{counter:016x}"


def is_naa(text: str) -> bool:
    return isinstance(text, str) and NAA_RE.fullmatch(text) is not None


def check_naa(text: str) -> str:
    if not is_naa(text):
        raise InvalidInput(detail=f"{text!r} is not an NAA type 6 id (naa.6 and 31 hex digits)")
    return text
