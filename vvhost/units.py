"""Sizes and names as users type them."""

from __future__ import annotations

import re

from .errors import InvalidInput

MiB = 1 << 20
_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# ASCII digits only: int() would also take other scripts' digits ("١٢٣").
_SIZE_RE = re.compile(r"^[ \t]*([0-9]+)[ \t]*([KMGTP]?)(?:I?B)?[ \t]*$", re.IGNORECASE | re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}")
MAX_SIZE = 1 << 50


def parse_size(text: str | int, *, what: str = "size", align: int = MiB) -> int:
    """Parse ``10G``, ``512M``, ``1048576`` (binary units) into bytes, a multiple of ``align``."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise InvalidInput(detail=f"{what} {text!r} is not a size (examples: 10G, 512M, 1048576)")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.fullmatch(text) if len(text) <= 64 else None
        if not match:
            raise InvalidInput(
                detail=f"{what} {text!r} is not a size (examples: 10G, 512M, 1048576)"
            )
        value = int(match.group(1)) * _SUFFIX[match.group(2).upper()]
    if value <= 0:
        raise InvalidInput(detail=f"{what} must be positive")
    if value > MAX_SIZE:
        raise InvalidInput(detail=f"{what} {value} is larger than {MAX_SIZE} bytes")
    if value % align:
        raise InvalidInput(detail=f"{what} {value} is not a multiple of {align} bytes (1 MiB)")
    return value


def check_name(name: str, *, what: str = "name") -> str:
    """Names: 1-128 characters, letters, digits and ``._@:+-``; no path separators."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInput(
            detail=f"{what} {name!r} is invalid: use 1-128 letters, digits or ._@:+- "
            "and start with a letter or digit"
        )
    return name


def human(n: int) -> str:
    """1536 -> '1.5K'; exact multiples print without decimals."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(value) < 1024 or unit == "P":
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)
