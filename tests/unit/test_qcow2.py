"""The qcow2 writer alone, checked with the real tools: ``qemu-img check`` finds no
error, and every layer, read through its chain, equals a raw file holding what
that point should hold (``qemu-img compare``; ``qemu-io read -P`` for a few)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.patterns import chunk_bytes
from vvhost import qcow2

C = qcow2.CLUSTER
MiB = 1 << 20


def run(*cmd: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if ok:
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}{done.stderr}"
    return done


def check_image(path: str) -> None:
    out = run("qemu-img", "check", "--output=json", path).stdout
    report = json.loads(out)
    assert report.get("check-errors", 0) == 0, report
    assert report.get("leaks", 0) == 0 and report.get("corruptions", 0) == 0, report


def assert_reads_like(image: str, expected: bytes | bytearray, tmp_path: str) -> None:
    ref = os.path.join(tmp_path, "expected.raw")
    with open(ref, "wb") as fh:
        fh.write(expected)
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", image, ref)
    info = json.loads(run("qemu-img", "info", "--output=json", image).stdout)
    assert info["virtual-size"] == len(expected)


def test_single_layer_holds_its_chunks(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "a.qcow2")
    size = 8 * MiB
    expected = bytearray(size)
    with qcow2.Writer(path, size) as w:
        for off in (0, 3 * C, 4 * C, 100 * C):
            data = chunk_bytes("A", off)
            w.write(off, data)
            expected[off : off + C] = data
        run_of_three = b"".join(chunk_bytes("R", 20 * C + i * C) for i in range(3))
        w.write(20 * C, run_of_three)
        expected[20 * C : 23 * C] = run_of_three
    assert w.stats.data_clusters == 7 and w.stats.zero_clusters == 0
    check_image(path)
    assert_reads_like(path, expected, tmp_path)
    info = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == size
    assert info["cluster-size"] == C and "backing-filename" not in info
    assert info["format-specific"]["data"]["compat"] == "1.1"
    assert info["format-specific"]["data"]["refcount-bits"] == 16
    # only the data plus header, one L2 table, the L1 table and the refcount structures
    assert w.stats.file_size == (7 + 5) * C == os.path.getsize(path)
    assert w.stats.bytes_written < 7 * C + 5 * C


def test_layers_over_a_backing_file_with_zero_clusters(tmp_path: str) -> None:
    size = 4 * MiB
    bottom, top = os.path.join(tmp_path, "01.qcow2"), os.path.join(tmp_path, "02.qcow2")
    point1 = bytearray(size)
    with qcow2.Writer(bottom, size) as w:
        block = b"".join(chunk_bytes("A", i * C) for i in range(16))
        w.write(0, block)
        point1[: 16 * C] = block
    point2 = bytearray(point1)
    with qcow2.Writer(top, size, backing="01.qcow2") as w:
        w.write(2 * C, chunk_bytes("B", 2 * C))  # over backing data
        point2[2 * C : 3 * C] = chunk_bytes("B", 2 * C)
        w.write(40 * C, chunk_bytes("B", 40 * C))  # over a hole of the backing
        point2[40 * C : 41 * C] = chunk_bytes("B", 40 * C)
        w.zero(5 * C, 3 * C)  # backing data that became zeros
        point2[5 * C : 8 * C] = bytes(3 * C)
        w.zero(50 * C, C)  # zeros over a hole: harmless
    assert (w.stats.data_clusters, w.stats.zero_clusters) == (2, 4)
    for image in (bottom, top):
        check_image(image)
    assert_reads_like(bottom, point1, tmp_path)
    assert_reads_like(top, point2, tmp_path)
    info = json.loads(run("qemu-img", "info", "--output=json", top).stdout)
    assert info["backing-filename"] == "01.qcow2"
    assert info["backing-filename-format"] == "qcow2"
    chain = json.loads(run("qemu-img", "info", "--backing-chain", "--output=json", top).stdout)
    assert [os.path.basename(x["filename"]) for x in chain] == ["02.qcow2", "01.qcow2"]
    # the zeroed clusters hide the backing's data; the rest shows through
    io = run(
        "qemu-io", "-r", "-f", "qcow2",
        "-c", "read -P 0 320k 192k",
        "-c", f"read -P {chunk_bytes('A', 0)[0]} 0 1",
        top,
    )  # fmt: skip
    assert "Pattern verification failed" not in io.stdout + io.stderr
    mapping = json.loads(run("qemu-img", "map", "--output=json", top).stdout)
    zeros = [m for m in mapping if m["zero"] and m["depth"] == 0 and m["start"] == 5 * C]
    assert zeros and zeros[0]["length"] >= 3 * C


def test_rewrites_tail_cluster_and_l2_boundaries(tmp_path: str) -> None:
    """Clusters written twice, zeroed after data and data after zero; a virtual size
    that is not whole clusters; writes in several 512 MiB L2 regions."""
    size = 1536 * MiB + 4096
    path = os.path.join(tmp_path, "big.qcow2")
    offsets = [0, 511 * MiB, 512 * MiB, 1024 * MiB + 7 * C]
    with qcow2.Writer(path, size) as w:
        for off in offsets:
            w.write(off, chunk_bytes("X", off))
        w.write(0, chunk_bytes("Y", 0))  # in place
        w.zero(512 * MiB, C)  # data then zero
        w.zero(3 * C, C)
        w.write(3 * C, chunk_bytes("Z", 3 * C))  # zero then data
        w.write(size - 4096, b"\x5a" * 4096)  # the short last cluster
    check_image(path)
    io = run(
        "qemu-io", "-r", "-f", "qcow2",
        "-c", f"read -P {chunk_bytes('Y', 0)[0]} 0 1",
        "-c", f"read -P {chunk_bytes('Z', 3 * C)[0]} {3 * C} 1",
        "-c", f"read -P 0 {512 * MiB} {C}",
        "-c", f"read -P {chunk_bytes('X', 511 * MiB)[0]} {511 * MiB} 1",
        "-c", f"read -P 90 {size - 4096} 4096",
        path,
    )  # fmt: skip
    assert "Pattern verification failed" not in io.stdout + io.stderr
    out = os.path.join(tmp_path, "whole.raw")
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, out)
    with open(out, "rb") as fh:
        for off, label in ((0, "Y"), (3 * C, "Z"), (511 * MiB, "X"), (1024 * MiB + 7 * C, "X")):
            fh.seek(off)
            assert fh.read(C) == chunk_bytes(label, off), off
        fh.seek(512 * MiB)
        assert fh.read(C) == bytes(C)
        fh.seek(size - 4096)
        assert fh.read() == b"\x5a" * 4096


def test_refcount_layout_counts_itself() -> None:
    per_block = qcow2.REFCOUNTS_PER_BLOCK
    for used in (1, 10, per_block - 2, per_block - 1, per_block, 5 * per_block + 3, 10**7):
        blocks, table = qcow2.refcount_layout(used)
        total = used + blocks + table
        assert blocks * per_block >= total > (blocks - 1) * per_block
        assert table * qcow2.CLUSTER >= blocks * 8


def test_empty_image_and_bad_calls(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "e.qcow2")
    with qcow2.Writer(path, 1 * MiB, backing="base.qcow2") as w:
        with pytest.raises(ValueError, match="multiple of the cluster"):
            w.write(100, b"x" * C)
        with pytest.raises(ValueError, match="past the virtual size"):
            w.write(1 * MiB, b"x" * C)
        with pytest.raises(ValueError, match="whole number of clusters"):
            w.write(0, b"x" * 100)
    info = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    assert info["virtual-size"] == 1 * MiB and info["backing-filename"] == "base.qcow2"
    with pytest.raises(FileExistsError):
        qcow2.Writer(path, 1 * MiB)
    with pytest.raises(ValueError, match="backing file name"):
        qcow2.Writer(os.path.join(tmp_path, "long.qcow2"), MiB, backing="x" * 2000)
    failed = os.path.join(tmp_path, "failed.qcow2")
    with pytest.raises(RuntimeError), qcow2.Writer(failed, MiB) as w:
        w.write(0, b"x" * C)
        raise RuntimeError("boom")
    assert not os.path.exists(failed)


@pytest.mark.parametrize("kind", ["file", "pipe"])
def test_data_copied_from_a_source_file(tmp_path: str, kind: str) -> None:
    """``write(..., source=(fd, offset))`` copies in the kernel from a file and falls
    back to writing the buffer where that cannot work (a pipe)."""
    size = 2 * MiB
    src = os.path.join(tmp_path, "src.raw")
    body = b"".join(chunk_bytes("S", i * C) for i in range(size // C))
    with open(src, "wb") as fh:
        fh.write(body)
    path = os.path.join(tmp_path, "c.qcow2")
    expected = bytearray(size)
    with open(src, "rb") as fh:
        rfd, wfd = os.pipe()
        fd = fh.fileno() if kind == "file" else rfd
        try:
            with qcow2.Writer(path, size) as w:
                for first, count in ((3, 4), (10, 1), (20, 12)):
                    piece = body[first * C : (first + count) * C]
                    w.write(first * C, piece, source=(fd, first * C))
                    expected[first * C : (first + count) * C] = piece
        finally:
            os.close(rfd)
            os.close(wfd)
    assert w.stats.data_clusters == 17
    check_image(path)
    assert_reads_like(path, expected, tmp_path)
