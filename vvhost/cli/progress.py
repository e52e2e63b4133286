"""Progress bars for long copies: the call runs in a thread with an operation id
that the bar polls (``GET /v1/ops/ID``); without a terminal it simply waits."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

import click

from ..client import Client
from ..errors import NotFound


def run_with_progress(
    client: Client, label: str, call: Callable[[str], Any], quiet: bool = False
) -> Any:
    op_id = str(uuid.uuid4())
    if quiet or not sys.stderr.isatty():
        return call(op_id)
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["result"] = call(op_id)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    bar: Any = None
    poller = client.twin()
    try:
        while thread.is_alive():
            thread.join(0.2)
            try:
                state = poller.operation(op_id)
            except NotFound:
                continue
            if state["total"] and bar is None:
                bar = click.progressbar(length=state["total"], label=label, file=sys.stderr)
                bar.__enter__()
            if bar is not None:
                bar.update(max(0, state["done"] - bar.pos))
    finally:
        if bar is not None:
            bar.update(bar.length - bar.pos if "error" not in box else 0)
            bar.__exit__(None, None, None)
        if poller is not client:
            poller.close()
    if "error" in box:
        raise box["error"]
    return box.get("result")
