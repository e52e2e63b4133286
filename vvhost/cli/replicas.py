"""``vvhost replica list``: the control-plane replicas sharing the catalog."""

from __future__ import annotations

import time

import click

from . import output
from .base import Session, json_option, pass_session


@click.group()
def replica() -> None:
    """Control-plane replicas sharing one PostgreSQL catalog."""


@replica.command("list")
@json_option
@pass_session
def replica_list(s: Session, as_json: bool) -> None:
    """List replicas: node, lease left, epoch, state; * marks the one answering."""
    rows = s.client.replicas()
    if as_json:
        output.emit_json(rows)
        return
    now = time.time()
    shown = [
        {
            "id": ("* " if r["me"] else "") + r["id"],
            "node": r["node"],
            "state": r["state"] if r["lease_left"] > 0 or r["state"] != "live" else "expired",
            "lease_left": f"{r['lease_left']:.1f}s",
            "epoch": r["epoch"],
            "up": f"{now - r['started']:.0f}s",
            "url": r["url"] or "-",
        }
        for r in rows
    ]
    output.table(shown, ["id", "node", "state", "lease_left", "epoch", "up", "url"])
