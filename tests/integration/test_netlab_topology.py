"""The VM tests in the lab topology of many hosts: a storage node (the control plane
with its catalog in a private PostgreSQL, the endpoint daemons on the lab bridge,
an XFS array) and two KVM hosts, each in its own network and mount namespace,
that reach the control plane only over TCP + TLS with their own tokens and their
vvols only over the lab network (tests/netlab.py).

One lab serves the whole module (each test leaves it empty): a live migration
over the bridge (iSCSI on kvm1, NBD over TLS on kvm2, the hooks binding over the
network on start and on the way in, and the source's release), a VM snapshot
taken, reverted and checked by the guest, and what one host cannot reach: the
other host's exports, the control plane's unix socket, the catalog, the TLS
listener spoken to in plain text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy

from tests.integration.test_vm_migrate import (
    CMDS,
    COUNTER_OFF,
    DATA,
    DISKS,
    appending_serial,
    check_counting,
    counters,
    hosts_of_bindings,
    p2p,
    protocols,
    wait_bindings,
)
from tests.integration.test_vm_nbd_tls import tls_sources
from tests.netlab import NetLab, net_lab
from tests.patterns import Patterns, chunk_bytes
from tests.vmlab import (
    VDA_MIB,
    MiB,
    add_go_channel,
    boot,
    create_vm,
    go,
    log_text,
    see,
    set_cmdline,
    vvhost_json,
    wait_for_end,
    wait_line,
    write_all,
)
from vvhost.guest import GuestImage, guest_cmdline, parse_serial, pattern_bytes, read_counter

if TYPE_CHECKING:
    from vvhost.pglab import PgLab

QEMU_IMG = "/usr/bin/qemu-img"


@pytest.fixture(scope="module")
def topo(
    tmp_path_factory: pytest.TempPathFactory,
    guest: GuestImage,
    pg_server: PgLab,
    xfs_mount: str,
) -> Iterator[NetLab]:
    tmp = str(tmp_path_factory.mktemp("topo"))
    database = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(database)
    array = tempfile.mkdtemp(dir=xfs_mount)
    try:
        with net_lab(tmp, guest, db_url=url, hidden=(pg_server.sockdir, array)) as lab:
            lab.admin.tenant_create("alpha")
            lab.admin.array_add("a1", "dir", array)
            lab.admin.container_create("pool", "4G", arrays=["a1"])
            lab.admin.datastore_create("ds", "4G", ["pool"], tenant="alpha")
            lab.endpoints()  # iscsi0 and nbd0 (TLS) on the bridge
            lab.add_host("kvm1", "alpha", "iscsi", migration=True)
            lab.add_host("kvm2", "alpha", "nbd", migration=True)
            yield lab
    finally:
        shutil.rmtree(array, ignore_errors=True)
        pg_server.drop_database(database)


def empty(lab: NetLab) -> None:
    """What every test leaves: nothing bound, nothing stored, catalog and arrays agree."""
    assert lab.admin.bindings() == [] and lab.admin.vvols() == []
    assert lab.admin.audit()["ok"]


def test_the_topology_is_what_it_says(topo: NetLab) -> None:
    """The catalog is PostgreSQL; the endpoints and the control plane listen on the
    bridge; a host reaches the control plane over TLS with its own token only."""
    lab = topo
    assert lab.db_url is not None
    engine = sqlalchemy.create_engine(lab.db_url)
    try:
        with engine.connect() as conn:
            names = conn.execute(sqlalchemy.text("SELECT name FROM hosts")).scalars().all()
    finally:
        engine.dispose()
    assert sorted(names) == ["kvm1", "kvm2"]
    assert not os.path.exists(os.path.join(lab.server.state_dir, "catalog.db"))
    for pe in lab.admin.pes():
        assert pe["portal"].startswith(f"{lab.net.gateway}:"), pe
    shown = lab.vvhost("kvm1", "host", "show", "kvm1", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["state"] == "ok"
    empty(lab)


def test_live_migration_over_the_lab_network(topo: NetLab) -> None:
    """kvm1 starts the VM (its hook binds over iSCSI), it moves live to kvm2 (kvm2's
    hook binds over NBD with TLS, kvm1's releases) and back with ``vvhost vm
    migrate`` run on kvm2; the guest never stops counting and its data stays."""
    lab = topo
    kvm1, kvm2 = lab.hosts["kvm1"], lab.hosts["kvm2"]
    log = create_vm(lab, "mig", "iscsi", CMDS, host="kvm1", disks=DISKS, keep_running=True)  # type: ignore[arg-type]
    appending_serial(kvm1, "mig")
    out = lab.vvhost("kvm1", "vm", "start", "mig")
    assert out.returncode == 0, out.stderr
    wait_line(log, "counter 20")
    wait_bindings(lab, {("kvm1", "iscsi0")}, 2)  # type: ignore[arg-type]
    dom = kvm1.connect().lookupByName("mig")
    assert disk_hosts(dom.XMLDesc(0)) == {("iscsi", lab.net.gateway)}  # over the bridge
    at_switch = counters(log)[-1]
    p2p(dom, kvm2)  # plain libvirt between the namespaces: the hooks do the storage side
    moved = kvm2.connect().lookupByName("mig")
    assert moved.isActive() and not dom.isActive()
    assert protocols(moved.XMLDesc(0)) == {"nbd"}
    assert len(tls_sources(moved.XMLDesc(0))) == 2  # TLS, kvm2's own daemon on the bridge
    assert disk_hosts(moved.XMLDesc(0)) == {("nbd", lab.net.gateway)}
    wait_bindings(lab, {("kvm2", "nbd0")}, 2)  # type: ignore[arg-type]
    check_counting(lab, "mig", log, at_switch)  # type: ignore[arg-type]

    assert kvm1.tcp_uri is not None
    wrong = lab.vvhost("kvm2", "vm", "migrate", "mig", "--to", kvm1.tcp_uri, "--dest-host", "kvm9")
    assert wrong.returncode == 4 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "reports the hostname kvm1, not kvm9" in wrong.stderr
    assert moved.isActive() and hosts_of_bindings(lab) == {("kvm2", "nbd0")}  # type: ignore[arg-type]
    at_switch = counters(log)[-1]
    out = lab.vvhost("kvm2", "vm", "migrate", "mig", "--to", kvm1.tcp_uri,
                     "--migrate-uri", f"tcp://{kvm1.address}", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["mode"], result["from"], result["to"], result["pe"]) == (
        "live",
        "kvm2",
        "kvm1",
        "iscsi0",
    )
    assert kvm1.connect().lookupByName("mig").isActive()
    wait_bindings(lab, {("kvm1", "iscsi0")}, 2)  # type: ignore[arg-type]
    check_counting(lab, "mig", log, at_switch)  # type: ignore[arg-type]
    assert lab.admin.audit()["ok"]

    out = lab.vvhost("kvm1", "vm", "stop", "mig", "--force")
    assert out.returncode == 0, out.stderr
    assert lab.admin.bindings() == []  # the hook released them on the way out
    vda = lab.admin.vvol("mig.vda")["path"]
    last = read_counter(vda, COUNTER_OFF)
    assert last is not None and last >= counters(log)[-1] - 10, (last, counters(log)[-1:])
    # the definition the migration left on kvm1 boots there, over the network
    verify = DATA.replace("write", "verify")
    set_cmdline(lab, "kvm1", "mig", guest_cmdline([verify]))  # type: ignore[arg-type]
    report = parse_serial(boot(lab, "mig", log).split("VVTEST BEGIN")[-1])  # type: ignore[arg-type]
    assert report.results[verify] == "ok", report
    assert lab.admin.bindings() == []
    out = lab.vvhost("kvm1", "vm", "delete", "mig")
    assert out.returncode == 0, out.stderr
    empty(lab)


def test_the_hook_reaches_the_control_plane_only_over_tls(topo: NetLab) -> None:
    """A host configured for the control plane's unix socket (which it cannot see)
    fails to start its VM with the hook's one line, and nothing is bound; over TLS
    with its token the hook binds on start and releases on power-off."""
    lab = topo
    log = create_vm(lab, "hooked", "iscsi", ["write:vda:H:0:1"], disks=("8M",))  # type: ignore[arg-type]
    lab.write_conf("kvm1", "iscsi", server=f"unix://{lab.server.socket}")
    try:
        out = lab.vvhost("kvm1", "vm", "start", "hooked")
        assert out.returncode != 0 and "cannot reach the control plane" in out.stderr, out
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
        assert lab.admin.bindings() == []
    finally:
        lab.write_conf("kvm1", "iscsi")
    report = parse_serial(boot(lab, "hooked", log))  # type: ignore[arg-type]
    assert report.ok and report.results["write:vda:H:0:1"] == "ok", report
    assert lab.admin.bindings() == []
    with open(lab.admin.vvol("hooked.vda")["path"], "rb") as fh:
        assert fh.read(MiB) == pattern_bytes("H", 0, 1)
    assert lab.vvhost("kvm1", "vm", "delete", "hooked").returncode == 0
    empty(lab)


def disk_hosts(xml: str) -> set[tuple[str, str]]:
    """(protocol, server address) of each network disk of a domain XML."""
    out = set()
    for src in ET.fromstring(xml).iterfind("devices/disk/source"):
        host = src.find("host")
        assert host is not None, ET.tostring(src)
        out.add((src.get("protocol", ""), host.get("name", "")))
    return out


def test_vm_snapshot_and_revert_over_the_lab_network(topo: NetLab) -> None:
    """A running guest writes A, s1 is taken (copy-on-write on the XFS array), it
    writes B; the revert is refused while it runs, then forced: the guest, booted
    again over the network, sees A and not B, and so does the array."""
    lab = topo
    cmds = write_all("A") + ["wait"] + write_all("B")
    log = create_vm(lab, "snap", "iscsi", cmds, keep_running=True)  # type: ignore[arg-type]
    channel = add_go_channel(lab, "kvm1", "snap")  # type: ignore[arg-type]
    out = lab.vvhost("kvm1", "vm", "start", "snap")
    assert out.returncode == 0, out.stderr
    wait_line(log, "wait 1")
    point = vvhost_json(lab, "kvm1", "vm", "snapshot", "snap", "s1")  # type: ignore[arg-type]
    assert point["running"] and point["mode"] == "cow" and point["stun_ms"] > 0
    go(channel, log, 1)
    wait_for_end(log)
    assert parse_serial(log_text(log)).ok
    vda = lab.admin.vvol("snap.vda")["path"]
    with open(vda, "rb") as fh:
        assert fh.read(VDA_MIB * MiB) == pattern_bytes("B", 0, VDA_MIB)

    refused = lab.vvhost("kvm1", "vm", "revert", "snap", "s1")
    assert refused.returncode == 4 and "running" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    out = lab.vvhost("kvm1", "vm", "revert", "snap", "s1", "--force")
    assert out.returncode == 0, out.stderr
    with open(vda, "rb") as fh:
        assert fh.read(VDA_MIB * MiB) == pattern_bytes("A", 0, VDA_MIB)
    see(lab, "snap", log, "A", "B")  # type: ignore[arg-type]
    assert lab.admin.bindings() == []

    listing = vvhost_json(lab, "kvm1", "vm", "snapshots", "snap")  # type: ignore[arg-type]
    assert [p["name"] for p in listing["points"]] == ["s1"] and listing["current"] == "s1"
    for args in (("snapshot-delete", "snap", "s1"), ("delete", "snap")):
        out = lab.vvhost("kvm1", "vm", *args)
        assert out.returncode == 0, out.stderr
    empty(lab)


def qemu_img_read(
    lab: NetLab, host: str, opts: str, out: str, objects: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``qemu-img convert`` of a network block device to ``out``, run in ``host``'s
    namespaces (its own network, its own view of the files)."""
    extra = [arg for obj in objects for arg in ("--object", obj)]
    return lab.run_in(host, QEMU_IMG, "convert", *extra, "--image-opts", opts, "-O", "raw", out)


def nbd_opts(handle: dict[str, Any], tls: bool = True) -> str:
    address, _, export = handle["uri"].removeprefix("nbd://").partition("/")
    host, _, port = address.rpartition(":")
    opts = f"driver=nbd,server.type=inet,server.host={host},server.port={port},export={export}"
    return opts + (",tls-creds=tls0" if tls else "")


def iscsi_opts(handle: dict[str, Any], initiator: str, chap: bool = True) -> str:
    """QEMU iscsi options as ``initiator``, with the handle's CHAP account (its
    secret in object ``chap0``, see ``chap_object``) unless ``chap`` is False."""
    portal, target, lun = handle["uri"].removeprefix("iscsi://").split("/")
    opts = (
        f"driver=iscsi,transport=tcp,portal={portal},target={target},lun={lun},"
        f"initiator-name={initiator}"
    )
    return opts + (f",user={handle['chap_user']},password-secret=chap0" if chap else "")


def chap_object(handle: dict[str, Any]) -> str:
    return f"secret,id=chap0,data={handle['chap_secret']}"


def creds(lab: NetLab, host: str) -> str:
    return f"tls-creds-x509,id=tls0,endpoint=client,dir={lab.hosts[host].nbd_tls_dir}"


def probe(lab: NetLab, host: str, code: str) -> subprocess.CompletedProcess[str]:
    return lab.run_in(host, sys.executable, "-c", code)


def test_a_host_reaches_only_its_own_exports_and_the_tls_api(topo: NetLab) -> None:
    lab = topo
    pat = Patterns()
    vids = {}
    for name in ("h-nbd", "h-iscsi"):
        made = lab.vvhost("kvm1", "vvol", "create", "--datastore", "ds", "--size", "4M",
                          "--name", name, "--json")  # fmt: skip
        assert made.returncode == 0, made.stderr
        vids[name] = json.loads(made.stdout)["id"]
        pat.write(lab.admin.vvol(vids[name])["path"], name, [0, 1 << 20])

    # another host's token cannot bind, nor fetch the NBD certificate, for kvm1
    stolen = lab.vvhost("kvm2", "vvol", "bind", vids["h-nbd"], "--host", "kvm1", "--pe", "nbd0")
    assert stolen.returncode != 0 and len(stolen.stderr.strip().splitlines()) == 1, stolen.stderr
    assert lab.admin.bindings() == []
    elsewhere = os.path.join(lab.tmp, "stolen-creds")
    stolen = lab.vvhost("kvm2", "host", "nbd-credentials", "kvm1", "--dir", elsewhere)
    assert stolen.returncode != 0 and not os.path.exists(os.path.join(elsewhere, "client-key.pem"))

    # a host sees what an array can do, never how it is reached or where its data is
    seen = lab.vvhost("kvm2", "array", "show", "a1", "--json")
    assert seen.returncode == 0, seen.stderr
    view = json.loads(seen.stdout)
    assert view["capabilities"] and view["settings"] == {}
    assert not {"path", "where", "fs_id"} & set(view)
    assert lab.hidden[2] not in seen.stdout  # the array's directory
    assert lab.vvhost("kvm2", "array", "list").returncode != 0  # the inventory is the admin's

    # kvm1 binds both for itself, each host holds its own NBD certificate
    handles = {}
    for name, pe in (("h-nbd", "nbd0"), ("h-iscsi", "iscsi0")):
        out = lab.vvhost("kvm1", "vvol", "bind", vids[name], "--host", "kvm1", "--pe", pe, "--json")
        assert out.returncode == 0, out.stderr
        handles[name] = json.loads(out.stdout)[0]["handle"]
    for host in ("kvm1", "kvm2"):
        out = lab.vvhost(host, "host", "nbd-credentials", host,
                         "--dir", lab.hosts[host].nbd_tls_dir)  # fmt: skip
        assert out.returncode == 0, out.stderr

    def read_as(host: str, opts: str, objects: tuple[str, ...] = ()) -> tuple[bytes | None, str]:
        """What ``host`` reads of a device (None: refused), and qemu-img's complaint."""
        target = os.path.join(lab.tmp, f"read-{uuid.uuid4().hex[:8]}.raw")
        done = qemu_img_read(lab, host, opts, target, objects)
        if done.returncode != 0:
            assert not os.path.exists(target) or os.path.getsize(target) == 0
            return None, done.stderr
        with open(target, "rb") as fh:
            data = fh.read()
        os.unlink(target)
        return data, done.stderr

    def holds(got: tuple[bytes | None, str], name: str) -> bool:
        data = got[0]
        return data is not None and data[: 64 << 10] == chunk_bytes(name, 0)

    def refused(got: tuple[bytes | None, str], words: str) -> bool:
        return got[0] is None and words in got[1]

    nbd = handles["h-nbd"]
    assert holds(read_as("kvm1", nbd_opts(nbd), (creds(lab, "kvm1"),)), "h-nbd")
    wrong = read_as("kvm2", nbd_opts(nbd), (creds(lab, "kvm2"),))
    assert refused(wrong, "TLS channel"), wrong  # kvm1's daemon knows only kvm1's certificate
    plain_nbd = read_as("kvm2", nbd_opts(nbd, tls=False))
    assert refused(plain_nbd, "TLS negotiation required"), plain_nbd
    iscsi = handles["h-iscsi"]
    chap = (chap_object(iscsi),)
    kvm1_iqn, kvm2_iqn = "iqn.2026-11.test.netlab:kvm1", "iqn.2026-11.test.netlab:kvm2"
    assert holds(read_as("kvm1", iscsi_opts(iscsi, kvm1_iqn), chap), "h-iscsi")
    other = read_as("kvm2", iscsi_opts(iscsi, kvm2_iqn), chap)
    assert refused(other, "Failed to log in to target"), other  # the ACL names kvm1 only
    claimed = read_as("kvm2", iscsi_opts(iscsi, kvm1_iqn, chap=False))
    assert refused(claimed, "Failed to log in to target"), claimed  # kvm1's name, no CHAP

    # the storage node's own doors are not on the lab network, nor in the host's files
    port = lab.plain_port
    assert os.path.exists(lab.server.socket)
    for host in ("kvm1", "kvm2"):
        cut = probe(lab, host, f"import os, sys; sys.exit(os.path.exists({lab.server.socket!r}))")
        assert cut.returncode == 0, "the control plane's socket is visible in the host"
        direct = lab.vvhost(host, "vvol", "list", env={"VVHOST_SOCKET": lab.server.socket,
                                                        "VVHOST_SERVER": ""})  # fmt: skip
        assert direct.returncode != 0 and "Traceback" not in direct.stderr, direct
        vvol_file = lab.admin.vvol(vids["h-nbd"])["path"]
        assert os.path.exists(vvol_file)
        hidden_file = probe(lab, host, f"import os, sys; sys.exit(os.path.exists({vvol_file!r}))")
        assert hidden_file.returncode == 0, "a host sees the array's files"
        loop = probe(
            lab, host, f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"
        )
        assert loop.returncode != 0
    pg_socket = [
        f for f in os.listdir(lab.hidden[1]) if f.startswith(".s.PGSQL.") and "." not in f[9:]
    ]
    assert pg_socket, "no PostgreSQL socket to hide"
    path = os.path.join(lab.hidden[1], pg_socket[0])
    code = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({path!r})"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    assert probe(lab, "kvm2", code).returncode != 0  # the catalog is the control plane's
    # plain HTTP to the TLS listener gets no answer; TLS without a token is refused
    plain = (
        f"import socket; s = socket.create_connection(({lab.net.gateway!r}, {port}), 5);"
        "s.sendall(b'GET /v1/health HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); s.settimeout(5)\n"
        "try:\n    print(s.recv(100))\nexcept OSError as e:\n    print(repr(e))"
    )
    answer = probe(lab, "kvm2", plain)
    assert answer.returncode == 0 and "HTTP/" not in answer.stdout, answer
    anonymous = lab.vvhost("kvm2", "vvol", "list", env={"VVHOST_TOKEN_FILE": ""})
    assert anonymous.returncode != 0 and "Traceback" not in anonymous.stderr

    for name in ("h-nbd", "h-iscsi"):
        out = lab.vvhost("kvm1", "vvol", "unbind", vids[name], "--host", "kvm1")
        assert out.returncode == 0, out.stderr
        pat.check(lab.admin.vvol(vids[name])["path"], name, [0, 1 << 20])
        assert lab.vvhost("kvm1", "vvol", "delete", vids[name]).returncode == 0
    empty(lab)
