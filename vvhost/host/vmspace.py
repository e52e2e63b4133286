"""Space figures of a VM: its disks' vvols and their snapshots, as the control
plane's catalog keeps them (see spacemodel.py)::

    disk vvol ── provisioned (size) · allocated · unique
      └ snapshot vvols ── unique (what deleting them would free)
"""

from __future__ import annotations

from typing import Any

from ..client import Client
from ..errors import NotFound


def _figures(v: dict[str, Any]) -> dict[str, Any]:
    return {k: v.get(k) for k in ("provisioned", "allocated", "unique")}


def vm_space(client: Client, vvol_ids: list[str]) -> dict[str, Any]:
    """Per-disk figures and the VM's totals (snapshots' unique bytes apart)."""
    disks: dict[str, dict[str, Any]] = {}
    snaps_unique = 0
    for vid in vvol_ids:
        try:
            v = client.vvol(vid)
        except NotFound:
            continue
        disks[vid] = _figures(v)
        for sid in v.get("snapshots") or []:
            try:
                snaps_unique += int(client.vvol(sid).get("unique") or 0)
            except NotFound:
                continue
    return {
        "disks": disks,
        "provisioned": sum(int(d["provisioned"] or 0) for d in disks.values()),
        "allocated": sum(int(d["allocated"] or 0) for d in disks.values()),
        "unique": sum(int(d["unique"] or 0) for d in disks.values()),
        "snapshots_unique": snaps_unique,
    }
