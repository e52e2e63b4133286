"""Who has an RBD image open: its watchers, named by the monitors.

    image.watchers_list()             [{"id": 4113, "addr": "127.0.0.1:0/4100792875"}, ...]
          │   id = the client's global id (``client.4113``), one per librados handle
          ▼
    mon dump -> each monitor's name   mon_command('{"prefix": "sessions"}', target="a")
          │   [{"entity_name": "client.vvhost-h1", "global_id": 4113,
          │     "addrs": {"addrvec": [{"addr": "127.0.0.1:0", "nonce": 4100792875}]}}, ...]
          ▼
    Opener(client="client.4113", addr=..., entity="client.vvhost-h1")

A client keeps one session with one monitor, so every monitor is asked (each
answers for its own sessions). The ``sessions`` command needs the monitors'
``allow *`` (an admin key); a key that may not ask, or monitors that do not
answer, leave ``entity`` empty and the caller names the client by its address.
"""

from __future__ import annotations

import json
from typing import Any

from .base import Opener
from .rbdindex import Image
from .rbdops import Images

TIMEOUT = 5  # seconds per monitor: naming a watcher must not hold up a refusal


def openers(images: Images, image: Image) -> list[Opener]:
    """The clients other than this one that have ``image`` open."""
    found = images.watcher_list(image)
    if not found:
        return []
    names = entities(images.cluster.handle(), {gid for gid, _addr in found})
    return [Opener(f"client.{gid}", addr, names.get(gid)) for gid, addr in found]


def entities(handle: Any, global_ids: set[int]) -> dict[int, str]:
    """global id -> entity name (``client.NAME``) for the ids some monitor knows."""
    out: dict[int, str] = {}
    for mon in _monitors(handle):
        for session in _sessions(handle, mon):
            gid = session.get("global_id")
            name = session.get("entity_name")
            if isinstance(gid, int) and gid in global_ids and name:
                out[gid] = str(name)
        if global_ids <= set(out):
            break
    return out


def _monitors(handle: Any) -> list[str]:
    reply = _ask(handle, {"prefix": "mon dump", "format": "json"}, None)
    mons = reply.get("mons", []) if isinstance(reply, dict) else []
    return [str(m["name"]) for m in mons if m.get("name")]


def _sessions(handle: Any, mon: str) -> list[dict[str, Any]]:
    reply = _ask(handle, {"prefix": "sessions", "format": "json"}, mon)
    return [s for s in reply if isinstance(s, dict)] if isinstance(reply, list) else []


def _ask(handle: Any, cmd: dict[str, Any], target: str | None) -> Any:
    """A monitor command's JSON reply; None when it fails in any way (not allowed,
    no answer, not JSON): the names are a courtesy, the refusal stands without them."""
    try:
        if target is None:
            ret, out, _err = handle.mon_command(json.dumps(cmd), b"", timeout=TIMEOUT)
        else:
            ret, out, _err = handle.mon_command(json.dumps(cmd), b"", TIMEOUT, target)
        return json.loads(out) if ret == 0 and out else None
    except Exception:  # noqa: BLE001 - any failure means "the monitors cannot say"
        return None
