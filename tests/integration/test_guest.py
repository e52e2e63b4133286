"""The test guest (vvhost.guest) booted under plain QEMU with TCG.

Each boot is one QEMU process, stopped by its PID if it outlives its timeout::

    qemu-system-x86_64 -accel tcg -m 256 -kernel vmlinuz -initrd initrd.gz -append CMDLINE
        -drive file=vda.raw,format=raw,if=virtio -drive file=vdb.raw,...
        -serial file:console.txt  ->  parse_serial()

No capability is needed beyond running QEMU's TCG, so nothing here skips. The guest
is built (or taken from the cache) by the module fixture; the concurrent-build test
uses its own cache dir, so it always builds cold.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from vvhost.guest import (
    GuestImage,
    GuestReport,
    build_guest,
    guest_cmdline,
    parse_serial,
    pattern_bytes,
    read_counter,
)

MiB = 1 << 20
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 120.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Boot:
    report: GuestReport
    console: str
    first_line_s: float | None  # QEMU start -> first VVTEST line on the console
    total_s: float  # QEMU start -> QEMU gone
    returncode: int | None


def qemu_argv(image: GuestImage, disks: list[str], cmdline: str, console: str) -> list[str]:
    argv = [QEMU, "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config"]
    argv += ["-display", "none", "-no-reboot", "-serial", f"file:{console}"]
    argv += ["-kernel", image.kernel, "-initrd", image.initrd, "-append", cmdline]
    for disk in disks:
        argv += ["-drive", f"file={disk},format=raw,if=virtio"]
    return argv


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def boot(
    image: GuestImage,
    disks: list[str],
    commands: list[str],
    workdir: str,
    *,
    until_counter: int | None = None,
    timeout: float = BOOT_TIMEOUT,
) -> Boot:
    """Run the guest until it powers off (or, with ``until_counter``, until it has
    counted that far, then kill it by PID). Fails the test on timeout."""
    console = os.path.join(workdir, f"console-{time.monotonic_ns()}.txt")
    argv = qemu_argv(image, disks, guest_cmdline(commands), console)
    start = time.monotonic()
    first: float | None = None
    with open(console + ".stderr", "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        while proc.poll() is None:
            now = time.monotonic()
            text = read_text(console)
            if first is None and "VVTEST " in text:
                first = now - start
            if until_counter is not None:
                counter = parse_serial(text).counter
                if counter is not None and counter >= until_counter:
                    break
            if now - start > timeout:
                pytest.fail(f"guest still running after {timeout:g}s; console:\n{text[-3000:]}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()  # by PID: this test's own QEMU only
        proc.wait(timeout=30)
    text = read_text(console)
    if first is None and "VVTEST " in text:
        first = time.monotonic() - start
    total = time.monotonic() - start
    return Boot(parse_serial(text), text, first, total, proc.returncode)


def make_disk(path: str, size: int) -> str:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def file_sha(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_range(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


@pytest.fixture(scope="module")
def guest() -> GuestImage:
    return build_guest()


# -- without QEMU ------------------------------------------------------------------------


def test_cmdline_joins_checked_commands() -> None:
    line = guest_cmdline(["write:vda:A:0:4", "verify:vdb:Zz9:16:1", "sum:vda", "sleep:1"])
    assert line.startswith("console=ttyS0 ")
    assert " quiet " in line and "vvkeep" not in line
    assert line.endswith(" vvtest=write:vda:A:0:4;verify:vdb:Zz9:16:1;sum:vda;sleep:1")
    assert guest_cmdline(["counter:vdb:1"], keep_running=True).endswith(" vvkeep=1")
    for bad in ["write:vda:A B:0:1", "write:vda:A:0", "sum:sda", "sum:vda;poweroff", "x", ""]:
        with pytest.raises(ValueError):
            guest_cmdline([bad])
    with pytest.raises(ValueError, match="too long"):
        guest_cmdline(["sum:vda"] * 400)


def test_parse_serial_reads_results_among_kernel_noise() -> None:
    text = (
        "SeaBIOS ...\r\n[    1.70] virtio_blk virtio0: [vda] 8192 512-byte logical blocks\r\n"
        "VVTEST BEGIN\r\nVVTEST write vda A 0 4 ok\r\n"
        "[    2.01] random: crng init done\r\nVVTEST verify vda B 0 4 FAIL\r\n"
        "VVTEST sum vda " + "ab" * 32 + "\r\nVVTEST size vda 4194304\r\n"
        "VVTEST counter 10\r\nVVTEST counter 20\r\nVVTEST error no disk vdc\r\n"
    )
    report = parse_serial(text)
    assert report.lines[0] == "BEGIN" and len(report.lines) == 8
    assert report.results == {"write:vda:A:0:4": "ok", "verify:vda:B:0:4": "FAIL"}
    assert report.checksums == {"vda": "ab" * 32} and report.sizes == {"vda": 4194304}
    assert report.counter == 20 and report.errors == ["no disk vdc"]
    assert not report.finished and not report.ok
    done = parse_serial("VVTEST BEGIN\nVVTEST write vda A 0 4 ok\nVVTEST END\n[ 3.1] reboot\n")
    assert done.finished and done.ok


def test_pattern_names_pattern_and_sector() -> None:
    data = pattern_bytes("A", 1, 1)
    assert len(data) == MiB
    assert data[:512] == b"vvtest A 2048".ljust(511) + b"\n"
    assert data[-512:] == b"vvtest A 4095".ljust(511) + b"\n"
    assert pattern_bytes("A", 0, 2)[MiB:] == data


# -- booted ------------------------------------------------------------------------------


def test_data_written_by_guest_persists_and_is_verified(
    guest: GuestImage, tmp_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    vda = make_disk(os.path.join(tmp_path, "vda.raw"), 64 * MiB)
    vdb = make_disk(os.path.join(tmp_path, "vdb.raw"), 32 * MiB)

    first = boot(
        guest,
        [vda, vdb],
        ["write:vda:A:1:4", "verify:vda:A:1:4", "write:vdb:B:0:2", "sum:vda", "sum:vdb"],
        str(tmp_path),
    )
    report = first.report
    assert report.ok, first.console[-3000:]
    assert first.returncode == 0  # powered off by itself
    assert report.lines[0] == "BEGIN" and report.lines[-1] == "END"
    assert report.results == {
        "write:vda:A:1:4": "ok",
        "verify:vda:A:1:4": "ok",
        "write:vdb:B:0:2": "ok",
    }
    # the guest's view of the disks is the raw files, byte for byte
    assert report.checksums == {"vda": file_sha(vda), "vdb": file_sha(vdb)}
    assert report.sizes == {"vda": 64 * MiB, "vdb": 32 * MiB}
    assert file_range(vda, 1 * MiB, 4 * MiB) == pattern_bytes("A", 1, 4)
    assert file_range(vda, 0, MiB) == bytes(MiB)
    assert file_range(vdb, 0, 2 * MiB) == pattern_bytes("B", 0, 2)

    second = boot(
        guest,
        [vda, vdb],
        [
            "verify:vda:A:1:4",
            "verify:vda:A:2:3",  # a part of what was written is still itself
            "verify:vdb:B:0:2",
            "verify:vda:B:1:4",  # wrong pattern
            "verify:vda:A:0:4",  # right pattern, wrong place
            "sum:vdc",  # no such disk: an error after ~10 s, not a hang
            "sum:vdb",
        ],
        str(tmp_path),
    )
    report = second.report
    assert report.finished and not report.ok, second.console[-3000:]
    assert report.results == {
        "verify:vda:A:1:4": "ok",
        "verify:vda:A:2:3": "ok",
        "verify:vdb:B:0:2": "ok",
        "verify:vda:B:1:4": "FAIL",
        "verify:vda:A:0:4": "FAIL",
    }
    assert report.errors == ["no disk vdc"]
    assert report.checksums == {"vdb": first.report.checksums["vdb"]}

    with capsys.disabled():
        print(
            f"\nguest boot: first VVTEST line after {first.first_line_s:.2f}s, "
            f"powered off after {first.total_s:.2f}s; second boot (with a 10 s disk wait) "
            f"{second.total_s:.2f}s"
        )


def test_counter_runs_until_killed(guest: GuestImage, tmp_path: str) -> None:
    vda = make_disk(os.path.join(tmp_path, "vda.raw"), 4 * MiB)
    run = boot(guest, [vda], ["counter:vda:1"], str(tmp_path), until_counter=20)
    assert run.report.counter is not None and run.report.counter >= 20
    assert not run.report.finished
    counted = read_counter(vda, 1)
    assert counted is not None and counted >= run.report.counter  # each record was synced
    assert file_range(vda, 0, MiB) == bytes(MiB)


def test_concurrent_builds_share_one_cache_entry(tmp_path: str) -> None:
    cache = os.path.join(tmp_path, "cache")
    script = os.path.join(ROOT, "fixtures", "build-guest")
    procs = [
        subprocess.Popen(
            [sys.executable, script, cache],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        outs.append(out)
    assert outs[0] == outs[1]
    paths = dict(line.split(" ", 1) for line in outs[0].splitlines())
    assert sorted(os.listdir(cache)) == [os.path.basename(os.path.dirname(paths["kernel"]))]
    again = build_guest(cache)
    assert (again.kernel, again.initrd) == (paths["kernel"], paths["initrd"])
    assert sorted(os.listdir(cache)) == [os.path.basename(os.path.dirname(paths["kernel"]))]
    assert os.path.getsize(again.initrd) < 4 * MiB


def test_discard_results_are_read_back() -> None:
    assert guest_cmdline(["discard:vda:0:6"]).count("discard:vda:0:6") == 1
    report = parse_serial("VVTEST BEGIN\nVVTEST discard vda 0 6 ok\nVVTEST END\n")
    assert report.ok and report.results["discard:vda:0:6"] == "ok"
    failed = parse_serial("VVTEST BEGIN\nVVTEST discard vdb 2 1 FAIL\nVVTEST END\n")
    assert not failed.ok and failed.results["discard:vdb:2:1"] == "FAIL"
