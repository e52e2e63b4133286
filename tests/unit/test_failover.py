"""Which failed requests a client sends to the next replica, and which never.

The replicas here are httpx mock transports that fail the way a dead, dying or
refusing server does; two tests use real sockets (nothing listening; a listener
that drops the TLS handshake) and one runs the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from vvhost.client import Client
from vvhost.daemon import free_port
from vvhost.errors import ArrayOffline, InvalidInput, NotFound, ReplicaUnavailable, Unreachable
from vvhost.failover import Endpoint, Failover, split_servers
from vvhost.host.config import HostConfig

HEALTH = {"ok": True, "version": "1", "recovered": None, "caller": "admin"}
Behaviour = Callable[[httpx.Request], httpx.Response]


@dataclass
class Replica:
    """A fake replica: answers with ``behaviour`` and counts what reached it."""

    name: str
    behaviour: Behaviour
    seen: list[str] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(f"{request.method} {request.url.path}")
        return self.behaviour(request)

    def endpoint(self) -> Endpoint:
        transport = httpx.MockTransport(self.handle)
        return Endpoint(self.name, httpx.Client(transport=transport, base_url=self.name))


def ok(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/health":
        return httpx.Response(200, json=HEALTH)
    if request.url.path == "/v1/tenants" and request.method == "POST":
        return httpx.Response(200, json={"name": "t1", "created": 1.0})
    if request.method == "DELETE":
        return httpx.Response(204)
    return httpx.Response(404, json={"code": "not-found", "message": "no such thing"})


def raising(exc: type[httpx.TransportError]) -> Behaviour:
    def behaviour(request: httpx.Request) -> httpx.Response:
        raise exc("simulated", request=request)

    return behaviour


def answering(status: int, code: str, message: str = "refused") -> Behaviour:
    def behaviour(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"code": code, "message": message, "fields": {}})

    return behaviour


def client_of(*replicas: Replica) -> Client:
    return Client(Failover([r.endpoint() for r in replicas]))


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_a_request_that_was_never_sent_goes_to_the_next_replica(
    failure: type[httpx.TransportError],
) -> None:
    a, b = Replica("http://a", raising(failure)), Replica("http://b", ok)
    api = client_of(a, b)
    # a write too: it never left this process
    assert api.tenant_create("t1")["name"] == "t1"
    assert a.seen == ["POST /v1/tenants"] and b.seen == ["POST /v1/tenants"]
    # the replica that answered is remembered: the dead one is not asked again
    assert api.health()["ok"] is True
    assert api.address == "http://b"
    assert a.seen == ["POST /v1/tenants"]
    assert b.seen == ["POST /v1/tenants", "GET /v1/health"]


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_a_write_that_may_have_been_carried_out_is_never_sent_again(
    failure: type[httpx.TransportError], method: str
) -> None:
    a, b = Replica("http://a", raising(failure)), Replica("http://b", ok)
    api = client_of(a, b)
    with pytest.raises(Unreachable) as err:
        if method == "POST":
            api.tenant_create("t1")
        elif method == "PUT":
            api.vvol_write("v1", 0, b"x" * 512)
        else:
            api.tenant_delete("t1")
    assert b.seen == []
    assert len(a.seen) == 1 and a.seen[0].startswith(method)
    text = str(err.value)
    assert "http://a" in text and "may have been carried out" in text and "\n" not in text
    assert err.value.exit_code == 7


@pytest.mark.parametrize("failure", [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError])
def test_a_read_is_sent_again_whatever_broke(failure: type[httpx.TransportError]) -> None:
    a, b = Replica("http://a", raising(failure)), Replica("http://b", ok)
    api = client_of(a, b)
    assert api.health() == HEALTH
    assert a.seen == b.seen == ["GET /v1/health"]


def test_an_answer_of_a_server_is_final() -> None:
    a, b = Replica("http://a", ok), Replica("http://b", ok)
    api = client_of(a, b)
    with pytest.raises(NotFound, match="no such thing"):
        api.vvol("nope")
    forbidden = Replica("http://c", answering(403, "forbidden", "host h1 is fenced"))
    api = client_of(forbidden, b)
    with pytest.raises(Exception, match="host h1 is fenced"):
        api.tenant_create("t1")
    assert a.seen == ["GET /v1/vvols/nope"] and forbidden.seen == ["POST /v1/tenants"]
    assert b.seen == []  # neither error went on to b


def test_a_replica_that_refuses_before_starting_sends_any_request_on() -> None:
    leaving = Replica("http://a", answering(503, "replica-unavailable", "shutting down"))
    b = Replica("http://b", ok)
    api = client_of(leaving, b)
    assert api.tenant_create("t1")["name"] == "t1"
    assert leaving.seen == b.seen == ["POST /v1/tenants"]


def test_other_503_answers_are_final_for_writes_but_not_for_reads() -> None:
    offline = Replica("http://a", answering(503, "array-offline", "array a1 is offline"))
    b = Replica("http://b", ok)
    api = client_of(offline, b)
    with pytest.raises(ArrayOffline, match="array a1 is offline"):
        api.tenant_create("t1")
    assert b.seen == []
    assert api.health() == HEALTH  # a read changes nothing: the next replica is asked
    assert b.seen == ["GET /v1/health"]


def test_a_write_answered_503_is_final_but_the_next_request_starts_elsewhere() -> None:
    fenced = Replica("http://a", answering(503, "replica-fenced", "a lost its lease"))
    b = Replica("http://b", ok)
    api = client_of(fenced, b)
    with pytest.raises(Exception, match="a lost its lease"):
        api.tenant_create("t1")
    assert b.seen == []  # it may have done part of it: not sent again
    assert api.address == "http://b"
    assert api.tenant_create("t1")["name"] == "t1"
    assert fenced.seen == ["POST /v1/tenants"] and b.seen == ["POST /v1/tenants"]


def test_every_replica_down_is_one_line_naming_each() -> None:
    a = Replica("https://a:8443", raising(httpx.ConnectError))
    b = Replica("https://b:8443", raising(httpx.ConnectTimeout))
    api = client_of(a, b)
    with pytest.raises(Unreachable) as err:
        api.tenant_create("t1")
    text = str(err.value)
    assert text.startswith(
        "cannot reach the control plane at any of https://a:8443, https://b:8443"
    )
    assert "https://a:8443: simulated" in text and "https://b:8443: simulated" in text
    assert "\n" not in text and err.value.exit_code == 7
    # all of them unavailable: the last replica's own answer
    gone = [
        Replica(f"http://{n}", answering(503, "replica-unavailable", f"{n} leaving")) for n in "xy"
    ]
    with pytest.raises(ReplicaUnavailable, match="y leaving"):
        client_of(*gone).health()


def test_the_search_starts_at_the_replica_that_answered_last() -> None:
    state = {"a_up": True}

    def a_behaviour(request: httpx.Request) -> httpx.Response:
        if state["a_up"]:
            return ok(request)
        raise httpx.ConnectError("refused", request=request)

    a, b, c = Replica("http://a", a_behaviour), Replica("http://b", ok), Replica("http://c", ok)
    api = client_of(a, b, c)
    api.health()
    state["a_up"] = False
    api.health()
    api.health()
    assert (len(a.seen), len(b.seen), len(c.seen)) == (2, 2, 0)
    assert api.address == "http://b"
    twin = api.twin()  # mock pools cannot be opened again: the same client
    assert twin is api


def test_split_servers() -> None:
    assert split_servers("https://a:1, https://b:2/,https://a:1") == ["https://a:1", "https://b:2"]
    assert split_servers(("https://a:1", "https://b:2 unix:///run/x.sock")) == [
        "https://a:1",
        "https://b:2",
        "unix:///run/x.sock",
    ]
    assert split_servers(None) == [] and split_servers(" , ") == []
    with pytest.raises(InvalidInput, match="'a.example:8443' is not"):
        split_servers("https://b:1,a.example:8443")


def test_host_config_takes_several_servers(tmp_path: os.PathLike[str]) -> None:
    token = os.path.join(tmp_path, "token")
    with open(token, "w", encoding="utf-8") as fh:
        fh.write("secret\n")
    path = os.path.join(tmp_path, "host.conf")
    conf = HostConfig(name="kvm1", server="https://a:8443, https://b:8443", token_file=token)
    conf.save(path)
    loaded = HostConfig.load(path)
    assert loaded.servers == ["https://a:8443", "https://b:8443"]
    api = loaded.client()
    try:
        assert api.conn.addresses == ["https://a:8443", "https://b:8443"]
        assert all(ep.http.headers["authorization"] == "Bearer secret" for ep in api.conn.endpoints)
    finally:
        api.close()
    HostConfig(name="kvm1", server=" , ").save(path)
    with pytest.raises(InvalidInput, match="server is empty"):
        HostConfig.load(path)
    no_token = HostConfig(name="kvm1", server="unix:///run/x.sock,https://b:8443")
    with pytest.raises(InvalidInput, match="https://b:8443 needs token_file"):
        no_token.client()


@pytest.fixture
def tls_dropper() -> Iterator[str]:
    """A listener that accepts and closes at once: TLS handshakes fail, as against a
    replica whose process is dying."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        sock.close()
        thread.join(5)


def test_real_sockets_refused_and_failed_handshake_go_on(tls_dropper: str) -> None:
    refused = f"https://127.0.0.1:{free_port()}"
    b = Replica("http://b", ok)
    api = Client.connect([refused, tls_dropper], "tok")
    api.conn.endpoints.append(b.endpoint())
    try:
        assert api.tenant_create("t1")["name"] == "t1"
        reasons = api.conn.tried
        assert [r.split(": ", 1)[0] for r in reasons] == [refused, tls_dropper]
        assert "refused" in reasons[0].lower()
    finally:
        api.close()


def test_cli_with_only_dead_servers_prints_one_line(tmp_path: os.PathLike[str]) -> None:
    token = os.path.join(tmp_path, "token")
    with open(token, "w", encoding="utf-8") as fh:
        fh.write("secret\n")
    urls = [f"https://127.0.0.1:{free_port()}" for _ in range(2)]
    env = {**os.environ, "VVHOST_SERVER": f"{urls[0]},{urls[1]}"}
    run = subprocess.run(
        [sys.executable, "-m", "vvhost", "--token-file", token, "tenant", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 7, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert lines[0].startswith(f"vvhost: error: cannot reach the control plane at any of {urls[0]}")
    assert urls[1] in lines[0]
    bad = subprocess.run(
        [sys.executable, "-m", "vvhost", "--server", "nohost:1", "--token-file", token, "health"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "'nohost:1' is not" in bad.stderr


def test_twin_opens_its_own_pools_to_the_same_replicas() -> None:
    api = Client.connect(["unix:///nonexistent/a.sock", "https://b:8443"], "tok")
    api.conn.current = 1
    twin = api.twin()
    try:
        assert twin is not api and twin.conn.addresses == ["/nonexistent/a.sock", "https://b:8443"]
        assert twin.address == "https://b:8443"  # starts where the first one is
        pairs = zip(twin.conn.endpoints, api.conn.endpoints, strict=True)
        assert all(t.http is not o.http for t, o in pairs)
        assert twin.http.headers["authorization"] == "Bearer tok"
    finally:
        twin.close()
        api.close()


def test_host_init_writes_several_servers(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "host.conf")
    argv = [sys.executable, "-m", "vvhost", "host", "init", "kvm1", "--path", path]
    argv += ["--server", "https://a:8443,https://b:8443", "--server", "https://c:8443"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert HostConfig.load(path).servers == ["https://a:8443", "https://b:8443", "https://c:8443"]
