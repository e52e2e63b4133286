"""``vvhost health`` and the events of endpoint supervision, against a running
``vvhost serve``: a killed endpoint daemon is restarted and says so (event,
metric, health); containers near their limits and a stuck operation show up
with advice; the exit status says how bad it is."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from vvhost.daemon import ServerProcess

MiB = 1 << 20


@pytest.fixture
def server(tmp_path: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        os.path.join(str(tmp_path), "state"), os.path.join(str(tmp_path), "s.sock")
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def health(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vvhost", "--socket", server.socket, "health", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_health_restart_events_and_advice(server: ServerProcess) -> None:
    api = server.client()
    api.pe_create("nbd1", "nbd")
    api.container_create("roomy", "1G")
    api.vvol_create("roomy", "8M", name="r1")
    ok = health(server)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK" in ok.stdout.splitlines()[0] and "nbd1: running" in ok.stdout

    api.container_create("warm", f"{100 * MiB}")
    api.vvol_create("warm", f"{85 * MiB}", name="w1")
    api.container_create("full", f"{100 * MiB}")
    api.vvol_create("full", f"{95 * MiB}", name="f1")
    # the endpoint daemon dies: the supervisor restarts it and says so
    pid = api.pe("nbd1")["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not [e for e in api.events()["events"] if e["kind"] == "endpoint.restarted"]:
        assert time.monotonic() < deadline, "no endpoint.restarted event"
        time.sleep(0.3)
    assert api.pe("nbd1")["pid"] != pid
    restarted = [e for e in api.events()["events"] if e["kind"] == "endpoint.restarted"]
    assert len(restarted) == 1 and restarted[0]["subject"] == "pe:nbd1"
    assert 'vvhost_endpoint_restarts_total{pe="nbd1"} 1.0' in api.metrics()
    # an operation that has been journaled for an hour
    with sqlite3.connect(os.path.join(server.state_dir, "catalog.db")) as db:
        db.execute(
            "INSERT INTO journal (id, op, vvol_id, step, args, created) VALUES (?,?,?,?,?,?)",
            (str(uuid.uuid4()), "extend", "v-gone", "begin", "{}", time.time() - 3600),
        )
    bad = health(server, "--json")
    assert bad.returncode == 3, bad.stderr
    report = json.loads(bad.stdout)
    items = {(i["kind"], i["name"]): i for i in report["items"]}
    assert report["status"] == "critical"
    assert items[("container", "roomy")]["status"] == "ok"
    assert items[("container", "warm")]["status"] == "warning"
    assert items[("container", "full")]["status"] == "critical"
    assert items[("container", "full")]["advice"]
    assert items[("endpoint", "nbd1")]["status"] == "warning"
    assert "restarted 1 time" in items[("endpoint", "nbd1")]["detail"]
    stuck = [i for i in report["items"] if i["kind"] == "operation"]
    assert len(stuck) == 1 and "extend of vvol v-gone" in stuck[0]["detail"]
    assert "restart vvhost serve" in stuck[0]["advice"]
    assert items[("array", "local")]["status"] == "ok"
    assert items[("array", "local")]["figures"]["free"] > 0
    text = health(server)
    assert text.returncode == 3 and "CRIT full: 95%" in text.stdout
    assert "-> grow its capacity" in text.stdout
    refused = health(server, "--stuck", "0")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    api.close()
