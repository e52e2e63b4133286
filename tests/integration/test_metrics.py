"""``GET /metrics``: Prometheus text from the standard client library, admins only,
scraped by a real Prometheus server (Debian's ``prometheus``, started here on
127.0.0.1 with a private directory and stopped by its PID) over TLS with an
admin token; a value is then read back through Prometheus' HTTP API."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.patterns import Patterns
from tests.tenancylab import Tls, tls_lab
from vvhost.daemon import free_port
from vvhost.errors import Forbidden, Unauthorized

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def lab(tmp_path: str) -> Iterator[Tls]:
    with tls_lab(str(tmp_path), Patterns()) as t:
        yield t


def tail(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()[-2000:]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_text_and_who_may_read_it(lab: Tls) -> None:
    text = lab.admin.metrics()
    got = samples(text)
    shared = (("container", "shared"), ("tenant", ""))
    assert got[("vvhost_container_capacity_bytes", shared)] == 4 << 30
    # three 16 MiB vvols are charged their size, the snapshot its unique bytes
    shown = lab.admin.container("shared")
    assert got[("vvhost_container_provisioned_bytes", shared)] == shown["provisioned"]
    assert 3 * (16 << 20) <= shown["provisioned"] <= 4 * (16 << 20)
    assert got[("vvhost_container_limit_bytes", shared)] == 4 << 30
    assert got[("vvhost_container_used_bytes", shared)] == shown["used"]
    assert got[("vvhost_container_allocated_bytes", shared)] == shown["allocated"]
    assert got[("vvhost_vvols", (("state", "ready"), ("type", "data")))] == 4
    assert got[("vvhost_operations_total", (("op", "create"), ("outcome", "finished")))] == 3
    inf = (("le", "+Inf"), ("op", "create"), ("outcome", "finished"))
    assert got[("vvhost_operation_duration_seconds_bucket", inf)] == 3
    assert ("vvhost_array_up", (("array", "local"), ("backend", "dir"))) in got
    assert got[("vvhost_endpoint_up", (("pe", "files"), ("protocol", "file")))] == 1
    assert got[("vvhost_endpoint_restarts_total", (("pe", "files"),))] == 0
    # over TCP: the admin token reads it; a host token is refused; no token is 401
    admin = lab.as_host("admin")
    assert "vvhost_vvols" in admin.metrics()
    admin.close()
    host = lab.as_host("ha")
    with pytest.raises(Forbidden):
        host.metrics()
    host.close()
    resp = httpx.get(f"{lab.url}/metrics", verify=lab.ca)
    assert resp.status_code == 401
    bad = httpx.get(f"{lab.url}/metrics", verify=lab.ca, headers={"Authorization": "Bearer x"})
    assert bad.status_code == 401 and bad.json()["code"] == Unauthorized.code


def test_prometheus_scrapes_and_answers(lab: Tls, tmp_path: str) -> None:
    base = os.path.join(str(tmp_path), "prometheus")
    os.makedirs(os.path.join(base, "data"))
    token_file = os.path.join(base, "token")
    with open(token_file, "w", encoding="utf-8") as fh:
        fh.write(lab.tokens["admin"])
    os.chmod(token_file, 0o600)
    target = lab.url.removeprefix("https://")
    config = os.path.join(base, "prometheus.yml")
    with open(config, "w", encoding="utf-8") as fh:
        fh.write(
            "global:\n"
            "  scrape_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: vvhost\n"
            "    scheme: https\n"
            "    scrape_interval: 1s\n"
            "    authorization:\n"
            "      type: Bearer\n"
            f"      credentials_file: {token_file}\n"
            "    tls_config:\n"
            f"      ca_file: {lab.ca}\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
    port = free_port()
    assert PROMETHEUS is not None, "prometheus is missing: ./run.sh setup installs it"
    log = open(os.path.join(base, "log"), "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={os.path.join(base, 'data')}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        cwd=base,
    )
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query"
        query = 'vvhost_container_capacity_bytes{container="shared"}'
        value = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and value is None:
            assert proc.poll() is None, tail(os.path.join(base, "log"))
            try:
                body = httpx.get(api, params={"query": query}, timeout=5).json()
            except httpx.HTTPError:
                body = {}
            result = body.get("data", {}).get("result", [])
            if result:
                value = float(result[0]["value"][1])
            else:
                time.sleep(0.5)
        assert value == 4 << 30
        ops = httpx.get(
            api, params={"query": 'vvhost_operations_total{op="snapshot"}'}, timeout=5
        ).json()
        assert float(ops["data"]["result"][0]["value"][1]) == 1
        up = httpx.get(api, params={"query": 'up{job="vvhost"}'}, timeout=5).json()
        assert float(up["data"]["result"][0]["value"][1]) == 1
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    assert proc.returncode is not None
