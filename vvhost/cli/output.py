"""Printing results: JSON for scripts, aligned tables and key/value lists for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from ..units import human

SIZE_KEYS = {
    "size",
    "used",
    "capacity",
    "provisioned",
    "free",
    "bytes",
    "allocated",
    "unique",
    "reserve",
    "limit",
    "physical_free",
    "charge",
    "held",
}


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in SIZE_KEYS and isinstance(value, int):
        return f"{human(value)} ({value})" if value >= 1024 else str(value)
    if key == "created" and isinstance(value, float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(k, v)}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return "; ".join(" ".join(f"{k}={fmt(k, x)}" for k, x in v.items()) for v in value)
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[c.upper() for c in columns]]
    for row in rows:
        cells.append([_short(c, row.get(c)) for c in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _short(key: str, value: Any) -> str:
    if key in SIZE_KEYS and isinstance(value, int):
        return human(value)
    return fmt(key, value)


def keyvalues(obj: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    keys = list(keys or obj.keys())
    width = max(len(k) for k in keys)
    for key in keys:
        click.echo(f"{key.ljust(width)}  {fmt(key, obj.get(key))}")


def show(obj: Any, as_json: bool, keys: Sequence[str] | None = None) -> None:
    if as_json:
        emit_json(obj)
    elif isinstance(obj, dict):
        keyvalues(obj, keys)
    else:
        click.echo(obj)
