"""Comparing catalog listings before and after a refused command: the space
figures are left out, since the control plane refreshes them in the background
at any time (after snapshots and clones, and every so often)."""

from __future__ import annotations

from typing import Any

FIGURES = frozenset({"provisioned", "allocated", "unique", "charge", "held"})


def without_figures(vvols: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in vv.items() if k not in FIGURES} for vv in vvols]
