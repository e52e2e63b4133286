"""``vvhost convert`` against a real ``vvhost serve``, real files and qemu-img, on
ext4 and on XFS with reflink: a vvol's snapshots become a qcow2 chain holding only
what changed, the chain becomes vvols again, every point compares equal, and bad
input leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.listing import without_figures
from tests.patterns import CHUNK, Patterns
from vvhost import convert
from vvhost.cephlab import CephLab
from vvhost.client import Client
from vvhost.daemon import ServerProcess
from vvhost.errors import ReadOnly

SIZE = 64 << 20


@dataclass
class Env:
    client: Client
    socket: str
    root: str

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "vvhost", "--socket", self.socket, "convert", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if ok:
            assert out.returncode == 0, out.stderr
        return out

    def state(self) -> tuple[list[dict[str, Any]], bool]:
        return without_figures(self.client.vvols()), bool(self.client.audit()["ok"])


def _serve(root: str) -> Iterator[Env]:
    server = ServerProcess(os.path.join(root, "state"), os.path.join(root, "s.sock")).start()
    client = server.client()
    try:
        client.container_create("pool", "2G")
        client.container_create("other", "2G")
        client.container_create("tight", "4M")
        yield Env(client, server.socket, root)
    finally:
        client.close()
        server.stop()


@pytest.fixture
def env(fs_dir: str) -> Iterator[Env]:
    """A control plane on ext4 and on XFS (reflink)."""
    yield from _serve(fs_dir)


@pytest.fixture
def plain(tmp_path: str) -> Iterator[Env]:
    """A control plane on ext4 only (for the bad-input cases)."""
    yield from _serve(str(tmp_path))


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}{done.stderr}"
    return done


def same(a: str, b: str, fmt_a: str = "raw", fmt_b: str = "raw") -> None:
    run("qemu-img", "compare", "-U", "-f", fmt_a, "-F", fmt_b, a, b)


def chunks(*indexes: int) -> list[int]:
    return [i * CHUNK for i in indexes]


def zero_chunks(path: str, *indexes: int) -> None:
    with open(path, "r+b") as fh:
        for i in indexes:
            fh.seek(i * CHUNK)
            fh.write(bytes(CHUNK))


def punch(path: str, first: int, count: int) -> None:
    run("fallocate", "--punch-hole", "-o", str(first * CHUNK), "-l", str(count * CHUNK), path)


def make_history(env: Env, patterns: Patterns) -> dict[str, Any]:
    """d: 16 MiB of pattern A; d@s1; a few percent changed (new data over data and
    over holes, data zeroed, data punched out); d@s2; changed again."""
    c = env.client
    path = c.vvol_create("pool", SIZE, name="d")["path"]
    patterns.write(path, "A", chunks(*range(0, 512, 2)))
    c.vvol_snapshot("d", name="d@s1")
    patterns.write(path, "B", chunks(1, 3, 5, 7, 600, 601, 602, 900, 10, 12))
    zero_chunks(path, 20, 22)
    punch(path, 24, 3)  # 24 and 26 held data, 25 was a hole already
    c.vvol_snapshot("d", name="d@s2")
    patterns.write(path, "C", chunks(2, 700, 701, 1))
    zero_chunks(path, 801)  # zeros over a hole: reads the same
    return c.vvol("d")


def test_round_trip(env: Env, patterns: Patterns, tmp_path: str) -> None:
    base = make_history(env, patterns)
    snaps = [env.client.vvol(s) for s in base["snapshots"]]
    points = sorted(snaps, key=lambda v: v["created"]) + [base]
    out = os.path.join(env.root, "chain")
    layers = json.loads(env.cli("cow-to-redo", "d", "--to", out, "--verify", "--json").stdout)

    names = ["01-s1.qcow2", "02-s2.qcow2", "03-current.qcow2"]
    assert [os.path.basename(x["file"]) for x in layers] == names
    assert sorted(os.listdir(out)) == names
    assert [x["snapshot"] for x in layers] == ["d@s1", "d@s2", None]
    for layer, point in zip(layers, points, strict=True):
        assert layer["vvol"] == point["id"]
        check = json.loads(run("qemu-img", "check", "--output=json", layer["file"]).stdout)
        assert check.get("check-errors", 0) == 0 and check.get("leaks", 0) == 0
        same(layer["file"], point["path"], "qcow2", "raw")
    chain = json.loads(
        run("qemu-img", "info", "--backing-chain", "--output=json", layers[-1]["file"]).stdout
    )
    assert [os.path.basename(x["filename"]) for x in chain] == names[::-1]
    assert [x.get("backing-filename") for x in chain] == ["02-s2.qcow2", "01-s1.qcow2", None]
    assert all(x.get("backing-filename-format", "qcow2") == "qcow2" for x in chain)

    # each layer holds only what changed since the point before
    l1, l2, l3 = layers
    assert l1["changed_bytes"] == l1["data_bytes"] == 256 * CHUNK and l1["zero_bytes"] == 0
    assert l2["changed_bytes"] == 14 * CHUNK
    assert (l2["data_bytes"], l2["zero_bytes"]) == (10 * CHUNK, 4 * CHUNK)
    assert l3["data_bytes"] == 4 * CHUNK and l3["changed_bytes"] in (4 * CHUNK, 5 * CHUNK)
    changed = sum(x["changed_bytes"] for x in layers)
    written = sum(x["bytes_written"] for x in layers)
    assert written <= changed + len(layers) * 6 * CHUNK, (written, changed)
    assert sum(os.path.getsize(x["file"]) for x in layers) <= changed + len(layers) * 6 * CHUNK

    # into another filesystem (the in-kernel copy cannot reach there on XFS)
    elsewhere = convert.cow_to_redo(env.client, "d", os.path.join(str(tmp_path), "elsewhere"))
    for layer, point in zip(elsewhere, points, strict=True):
        same(layer.file, point["path"], "qcow2", "raw")

    # and back: a new vvol in another container, one snapshot per lower point
    top = os.path.join(out, names[-1])
    made = json.loads(
        subprocess.run(
            [sys.executable, "-m", "vvhost", "--socket", env.socket, "convert", "redo-to-cow",
             top, "--container", "other", "--name", "copy", "--json"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    copy = made["vvol"]
    assert copy["name"] == "copy" and copy["container"] == "other" and copy["size"] == SIZE
    assert [s["name"] for s in made["snapshots"]] == ["copy@s1", "copy@s2"]
    assert [s["id"] for s in made["snapshots"]] == copy["snapshots"]
    for new, old in zip([*made["snapshots"], copy], points, strict=True):
        same(new["path"], old["path"])
    same(copy["path"], top, "raw", "qcow2")
    assert copy["used"] < SIZE // 2  # written sparse: the data, not the whole disk
    patterns.check(copy["path"], "C", chunks(2, 700, 701, 1))
    patterns.check(made["snapshots"][0]["path"], "A", chunks(*range(0, 512, 2)))

    # the Python API with a datastore instead of a container
    ds = env.client.datastore_create("ds", "1G", containers=["other"])
    result = convert.redo_to_cow(env.client, top, datastore=ds["id"], name="viads")
    assert [s["name"] for s in result["snapshots"]] == ["viads@s1", "viads@s2"]
    assert result["vvol"]["datastore"] == ds["id"]
    same(result["vvol"]["path"], base["path"])
    _, ok = env.state()
    assert ok


def test_redo_chain_made_by_qemu_with_a_raw_bottom(env: Env, tmp_path: str) -> None:
    """A chain written by QEMU itself: raw bottom, qcow2 layers with data, zero writes
    and discards; the point names come from the file names."""
    bottom = os.path.join(tmp_path, "01-gold.raw")
    with open(bottom, "wb") as fh:
        fh.truncate(8 << 20)
    run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 3M", "-c", "write -P 0x12 6M 1M", bottom)
    mid = os.path.join(tmp_path, "02-patched.qcow2")
    top = os.path.join(tmp_path, "03-now.qcow2")
    run("qemu-img", "create", "-f", "qcow2", "-b", "01-gold.raw", "-F", "raw", mid)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x21 1M 64k", "-c", "write -z 2M 128k", mid)
    run("qemu-img", "create", "-f", "qcow2", "-b", "02-patched.qcow2", "-F", "qcow2", top, "12M")
    run(
        "qemu-io", "-f", "qcow2",
        "-c", "discard 6M 512k",
        "-c", "write -P 0x31 10M 1M",
        "-c", "write -P 0x32 1M 4k",
        top,
    )  # fmt: skip
    made = json.loads(
        env.cli("redo-to-cow", top, "--container", "pool", "--name", "imp", "--json").stdout
    )
    assert [s["name"] for s in made["snapshots"]] == ["imp@gold", "imp@patched"]
    assert made["vvol"]["size"] == 12 << 20
    same(made["snapshots"][0]["path"], bottom)
    same(made["snapshots"][1]["path"], mid, "raw", "qcow2")
    same(made["vvol"]["path"], top, "raw", "qcow2")
    _, ok = env.state()
    assert ok


def _small_chain(root: str, size: str = "4M") -> str:
    root = os.path.join(root, size)
    os.mkdir(root)
    bottom, top = os.path.join(root, "01-s1.qcow2"), os.path.join(root, "02-current.qcow2")
    run("qemu-img", "create", "-f", "qcow2", bottom, size)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 1M", bottom)
    run("qemu-img", "create", "-f", "qcow2", "-b", "01-s1.qcow2", "-F", "qcow2", top)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x42 64k 64k", top)
    return top


def _compressed_chain(root: str) -> str:
    bottom, top = os.path.join(root, "c1.qcow2"), os.path.join(root, "c2.qcow2")
    run("qemu-img", "create", "-f", "qcow2", bottom, "4M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 1M", bottom)
    run("qemu-img", "create", "-f", "qcow2", "-b", "c1.qcow2", "-F", "qcow2", top)
    run("qemu-io", "-f", "qcow2", "-c", "write -c -P 0x43 128k 64k", top)
    return top


def _text_file(root: str) -> str:
    path = os.path.join(root, "notes.txt")
    with open(path, "w") as fh:
        fh.write("not a disk\n")
    return path


BAD: list[tuple[str, list[str], int, str]] = [
    ("unknown vvol", ["cow-to-redo", "nope", "--to", "{out}"], 3, "not found"),
    ("dir not empty", ["cow-to-redo", "d", "--to", "{full}"], 2, "is not empty"),
    ("a snapshot", ["cow-to-redo", "d@s1", "--to", "{out}"], 2, "is a snapshot"),
    ("no such top", ["redo-to-cow", "{root}/none.qcow2", "--container", "pool"], 3, "not found"),
    ("text top", ["redo-to-cow", "{text}", "--container", "pool"], 2, "not a disk image"),
    ("dir top", ["redo-to-cow", "{root}", "--container", "pool"], 2, "not a disk image"),
    ("compressed", ["redo-to-cow", "{compressed}", "--container", "pool"], 2, "compressed"),
    ("no container", ["redo-to-cow", "{top}", "--container", "nope"], 3, "not found"),
    ("no place", ["redo-to-cow", "{top}"], 2, "say where"),
    ("bad name", ["redo-to-cow", "{top}", "--container", "pool", "--name", "a/b"], 2, "invalid"),
    # the 4M base fills the container; its first snapshot is charged what it copies
    ("no room to snapshot", ["redo-to-cow", "{top}", "--container", "tight"], 5, "bytes free"),
    ("too big", ["redo-to-cow", "{big}", "--container", "pool"], 5, "bytes free"),
]


@pytest.mark.parametrize("args,code,text", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_leaves_nothing(
    plain: Env, patterns: Patterns, args: list[str], code: int, text: str
) -> None:
    c, root = plain.client, plain.root
    path = c.vvol_create("pool", "16M", name="d")["path"]
    patterns.write(path, "A", chunks(0, 5))
    c.vvol_snapshot("d", name="d@s1")
    full = os.path.join(root, "full")
    os.mkdir(full)
    with open(os.path.join(full, "keep"), "w") as fh:
        fh.write("mine\n")
    big = os.path.join(root, "big.qcow2")
    run("qemu-img", "create", "-f", "qcow2", big, "5G")
    chains = os.path.join(root, "chains")
    os.mkdir(chains)
    names = {
        "out": os.path.join(root, "out"),
        "full": full,
        "root": chains,
        "text": _text_file(chains),
        "top": _small_chain(chains),
        "compressed": _compressed_chain(chains),
        "big": big,
    }
    before, _ = plain.state()
    out = plain.cli(*[a.format(**names) for a in args], ok=False)
    assert out.returncode == code, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("vvhost: error: "), out.stderr
    assert text in out.stderr and "Traceback" not in out.stderr
    after, ok = plain.state()
    assert after == before and ok
    assert not os.path.exists(names["out"]) and os.listdir(full) == ["keep"]


class Stop(Exception):
    pass


def _stop_after(limit: int) -> convert.Progress:
    def progress(done: int, total: int) -> None:
        if done >= limit:
            raise Stop(f"stopped at {done} of {total}")

    return progress


def test_failure_halfway_leaves_nothing(plain: Env, patterns: Patterns) -> None:
    c = plain.client
    path = c.vvol_create("pool", "16M", name="d")["path"]
    patterns.write(path, "A", chunks(*range(0, 64, 2)))
    c.vvol_snapshot("d", name="d@s1")
    patterns.write(path, "B", chunks(*range(1, 64, 2)))
    c.vvol_snapshot("d", name="d@s2")
    patterns.write(path, "C", chunks(3))

    for where in ("missing", "existing"):
        out = os.path.join(plain.root, where)
        if where == "existing":
            os.mkdir(out)
        with pytest.raises(Stop):  # in the second layer
            convert.cow_to_redo(c, "d", out, progress=_stop_after(40 * CHUNK))
        assert os.path.isdir(out) == (where == "existing")
        assert not os.path.exists(out) or os.listdir(out) == []

    chain = os.path.join(plain.root, "ok")
    layers = convert.cow_to_redo(c, "d", chain, verify=True)
    assert [layer.point for layer in layers] == ["s1", "s2", "current"]
    before, _ = plain.state()
    with pytest.raises(Stop):  # after the first snapshot was taken
        convert.redo_to_cow(
            c, layers[-1].file, container="other", name="x", progress=_stop_after(40 * CHUNK)
        )
    after, ok = plain.state()
    assert after == before and ok


def test_round_trip_through_the_api(
    plain: Env, patterns: Patterns, tmp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the vvol files are not on this machine, both directions move the data
    through the control plane's API (vvol data reads and writes) alike."""
    monkeypatch.setattr(convert, "_local", lambda _vvol, _mode: None)
    c = plain.client
    d = make_history(plain, patterns)
    points = [c.vvol(s) for s in d["snapshots"]] + [d]
    out = os.path.join(str(tmp_path), "chain")
    layers = convert.cow_to_redo(c, "d", out, verify=True)
    for layer, point in zip(layers, points, strict=True):
        same(layer.file, point["path"], "qcow2")
    made = convert.redo_to_cow(c, layers[-1].file, container="other", name="back")
    back = [c.vvol(s["id"]) for s in made["snapshots"]] + [made["vvol"]]
    for new, old in zip(back, points, strict=True):
        assert patterns.digest(new) == patterns.digest(old)
    with pytest.raises(ReadOnly):  # the API writes only where a host could
        c.vvol_write(back[0]["id"], 0, b"x" * 512)
    assert c.vvol_read(back[-1]["id"], 2 * CHUNK, CHUNK) == c.vvol_read("d", 2 * CHUNK, CHUNK)


def test_point_names() -> None:
    assert convert.point_label("d@before upgrade", "d", "1234567890") == "before_upgrade"
    assert convert.point_label("other:snap", "d", "1234567890") == "other_snap"
    assert convert.point_label(None, "d", "1234567890") == "snap-12345678"
    assert convert.point_label("@@", "d", "abcdef012") == "snap-abcdef01"
    assert convert.label_from_file("/x/07-s2.qcow2", "layer1") == "s2"
    assert convert.label_from_file("/x/base.img", "layer1") == "base"
    assert convert.layer_file_name(3, 120, "s") == "003-s.qcow2"
    assert convert.snapshot_name("n", "x" * 200) == "n@" + "x" * 126


@pytest.fixture
def rbd_env(tmp_path: str, ceph_cluster: CephLab, ceph_pool: str) -> Iterator[Env]:
    """A control plane whose containers ``pool`` and ``other`` live on an RBD array."""
    root = str(tmp_path)
    server = ServerProcess(os.path.join(root, "state"), os.path.join(root, "s.sock")).start()
    client = server.client()
    try:
        rbd = {"pool": ceph_pool, "conf": ceph_cluster.conf, "keyring": ceph_cluster.admin_keyring}
        client.array_add("ceph", "rbd", rbd)
        client.container_create("pool", "2G", arrays=["ceph"])
        client.container_create("other", "2G", arrays=["ceph"])
        yield Env(client, server.socket, root)
    finally:
        client.close()
        server.stop()


def test_round_trip_on_rbd(rbd_env: Env, ceph_cluster: CephLab, tmp_path: str) -> None:
    """RBD vvols have no file: cow-to-redo reads the points through the control
    plane (bitmaps from fast-diff), redo-to-cow writes them back onto RBD, one RBD
    snapshot per lower point; every point reads the same."""
    env, c = rbd_env, rbd_env.client
    pat = Patterns()
    pat.ceph = (ceph_cluster.conf, ceph_cluster.admin_keyring)
    d = c.vvol_create("pool", SIZE, name="d")
    assert d["path"] is None and not d["where"].startswith("/")
    pat.write(d, "A", chunks(*range(0, 512, 2)))
    c.vvol_snapshot("d", name="d@s1")
    pat.write(d, "B", chunks(1, 3, 5, 600, 900, 10))
    with pat.open(d, writable=True) as vol:  # data over data made zeros
        for i in (20, 22, 24):
            vol.write(i * CHUNK, bytes(CHUNK))
    c.vvol_snapshot("d", name="d@s2")
    pat.write(d, "C", chunks(2, 700, 1))
    base = c.vvol("d")
    points = sorted((c.vvol(s) for s in base["snapshots"]), key=lambda v: v["created"]) + [base]

    out = os.path.join(str(tmp_path), "chain")
    layers = json.loads(env.cli("cow-to-redo", "d", "--to", out, "--verify", "--json").stdout)
    assert [os.path.basename(x["file"]) for x in layers] == [
        "01-s1.qcow2",
        "02-s2.qcow2",
        "03-current.qcow2",
    ]
    assert [x["data_bytes"] for x in layers] == [256 * CHUNK, 6 * CHUNK, 3 * CHUNK]
    assert layers[1]["zero_bytes"] >= 3 * CHUNK
    assert sum(x["changed_bytes"] for x in layers[1:]) < SIZE // 4  # what changed, not all
    for layer, point in zip(layers, points, strict=True):
        raw = layer["file"] + ".raw"
        run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", layer["file"], raw)
        assert pat.digest(raw) == pat.digest(point), layer["file"]
        os.unlink(raw)

    made = json.loads(
        env.cli(
            "redo-to-cow", layers[-1]["file"], "--container", "other", "--name", "copy", "--json"
        ).stdout
    )
    copy = made["vvol"]
    assert (copy["container"], copy["array"], copy["size"]) == ("other", "ceph", SIZE)
    assert [s["name"] for s in made["snapshots"]] == ["copy@s1", "copy@s2"]
    for new, old in zip([*made["snapshots"], copy], points, strict=True):
        assert "@" in new["where"] or new is copy
        assert pat.digest(new) == pat.digest(old)
    pat.check(copy, "C", chunks(2, 700, 1))
    pat.check(made["snapshots"][0], "A", chunks(*range(0, 512, 2)))
    # sparse: 10 of the 16 RBD objects hold data; ``used`` counts whole objects from the
    # object map, and an object the copy wrote zeros into may still be there (11)
    assert copy["used"] <= SIZE * 11 // 16
    assert env.client.audit()["ok"]
