"""``vvhost events`` and ``vvhost health``.

vvhost events [--since T] [--cursor ID] [--follow] [--json]
    T: epoch seconds or an age (90s, 15m, 2h, 7d).  --json prints
    {"events": [...], "cursor": ID}; with --follow one JSON event per line.
    --follow long-polls the server with the cursor, so no event is missed
    and none is printed twice, until Ctrl-C.
vvhost health [--stuck S] [--json]     exit 0 ok, 1 warning, 3 critical
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click

from ..service.events import parse_since
from . import output
from .base import Session, json_option, pass_session

POLL_WAIT = 25.0  # seconds one long poll may wait on the server
PAGE = 1000


@click.command()
@click.option("--since", default=None, help="From this time: epoch seconds or an age (15m, 2h).")
@click.option("--cursor", type=click.IntRange(min=0), default=0, help="Only events after this id.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@json_option
@pass_session
def events(s: Session, since: str | None, cursor: int, follow: bool, as_json: bool) -> None:
    """What happened: operations, endpoint restarts, leaks found, ... (yours, or all
    for an admin)."""
    start = parse_since(since)
    seen: list[dict[str, Any]] = []
    while True:
        page = s.client.events(cursor=cursor, since=start, limit=PAGE)
        cursor = page["cursor"]
        if follow:
            _print(page["events"], as_json)
        else:
            seen += page["events"]
        if len(page["events"]) < PAGE:
            break
    if not follow:
        if as_json:
            output.emit_json({"events": seen, "cursor": cursor})
        else:
            _print(seen, False)
        return
    while True:
        page = s.client.events(cursor=cursor, wait=POLL_WAIT, limit=PAGE)
        cursor = page["cursor"]
        _print(page["events"], as_json)


def _print(found: list[dict[str, Any]], as_json: bool) -> None:
    for ev in found:
        if as_json:
            click.echo(json.dumps(ev, sort_keys=True))
        else:
            when = datetime.fromtimestamp(ev["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            subject = f" {ev['subject']}" if ev["subject"] else ""
            click.echo(
                f"{ev['id']:>6} {when} {ev['severity']:<7} {ev['kind']}{subject}: {ev['message']}"
            )


EXIT = {"ok": 0, "warning": 1, "critical": 3}


@click.command()
@click.option(
    "--stuck",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Seconds after which a journaled operation counts as stuck.",
)
@json_option
@pass_session
def health(s: Session, stuck: float, as_json: bool) -> None:
    """One screen: arrays, containers near their limits, endpoint daemons, stuck
    operations, findings, and what to do about each (exit 1 warning, 3 critical)."""
    report = s.client.health_report(stuck)
    if as_json:
        output.emit_json(report)
    else:
        when = datetime.fromtimestamp(report.get("time", time.time()), UTC)
        click.echo(f"vvhost health at {when:%Y-%m-%d %H:%M:%S} UTC: {report['status'].upper()}")
        for kind in ("array", "container", "endpoint", "operation", "finding"):
            items = [i for i in report["items"] if i["kind"] == kind]
            if not items:
                continue
            click.echo(f"{kind}s:")
            for item in items:
                mark = {"ok": "ok  ", "warning": "WARN", "critical": "CRIT"}[item["status"]]
                click.echo(f"  {mark} {item['name']}: {item['detail']}")
                if item["advice"]:
                    click.echo(f"       -> {item['advice']}")
    if report["status"] != "ok":
        raise SystemExit(EXIT[report["status"]])
