"""``qemu-img``, the one typed wrapper everything in vvhost runs it through.

    info      qemu-img info --output=json [--backing-chain] IMAGE      -> dict | [dict]
    create    qemu-img create -q -f FMT [-o k=v,...] PATH SIZE
    convert   qemu-img convert [-n] [-p] SOURCE-ARGS... TARGET-ARGS...
    compare   qemu-img compare [-U] [-f F -F F] A B                      -> None | first difference
    commit    qemu-img commit -d IMAGE                                    (the layer stays)
    resize    qemu-img resize -f FMT IMAGE SIZE
    map       qemu-img map --output=json IMAGE-ARGS...                    -> [extent]
    measure   qemu-img measure --output=json -O FMT [-o ...] --size N    -> dict

Images are named by what ``qemu-img`` accepts: a path, ``json:{...}``, or the
argument lists of :func:`vvhost.host.vms.raw_source` / ``raw_target`` (bindings).
A failure raises :class:`QemuImgFailed` with the subcommand, exit status and the
tool's last line of complaint; a missing ``qemu-img`` is exit 127.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from ..errors import VvhostError

TIMEOUT = 3600.0


class QemuImgFailed(VvhostError):
    code = "qemu-img-failed"
    status = 502
    exit_code = 6
    template = "qemu-img {command} failed (exit {rc}): {detail}"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("qemu-img: ") if lines else "no message"


def run(
    command: str, *args: str, progress: bool = False, ok: Sequence[int] = (0,)
) -> subprocess.CompletedProcess[str]:
    """``qemu-img COMMAND ARGS``; ``progress`` lets its output through to the terminal."""
    try:
        done = subprocess.run(
            ["qemu-img", command, *args],
            capture_output=not progress,
            text=True,
            check=False,
            timeout=TIMEOUT,
        )
    except FileNotFoundError:
        raise QemuImgFailed(command=command, rc=127, detail="qemu-img is not installed") from None
    if done.returncode not in ok:
        detail = last_line(done.stderr or "")
        raise QemuImgFailed(command=command, rc=done.returncode, detail=detail)
    return done


def _json(command: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise QemuImgFailed(command=command, rc=0, detail="it printed no JSON") from None


def info(image: str, backing_chain: bool = False, force_share: bool = False) -> Any:
    """The image's description (a list, top first, with ``backing_chain``)."""
    flags = (["--backing-chain"] if backing_chain else []) + (["-U"] if force_share else [])
    return _json("info", run("info", "--output=json", *flags, image).stdout)


def virtual_size(image: str) -> int:
    return int(info(image)["virtual-size"])


def create(
    path: str, size: int | str, fmt: str = "qcow2", options: dict[str, str] | None = None
) -> None:
    opts = ["-o", ",".join(f"{k}={v}" for k, v in options.items())] if options else []
    run("create", "-q", "-f", fmt, *opts, path, str(size))


def convert(
    source: Sequence[str],
    target: Sequence[str],
    *,
    no_create: bool = True,
    progress: bool = False,
) -> None:
    """Copy what ``source`` reads into ``target`` (``-n``: into an existing target)."""
    flags = (["-n"] if no_create else []) + (["-p"] if progress else [])
    run("convert", *flags, *source, *target, progress=progress)


def compare(
    a: str, b: str, fmt_a: str | None = None, fmt_b: str | None = None, force_share: bool = True
) -> str | None:
    """None when ``a`` and ``b`` read the same, else qemu-img's first difference."""
    flags = (["-U"] if force_share else []) + (["-f", fmt_a] if fmt_a else [])
    flags += ["-F", fmt_b] if fmt_b else []
    done = run("compare", *flags, a, b, ok=(0, 1))
    return None if done.returncode == 0 else last_line(done.stdout)


def commit(image: str, objects: Sequence[str] = ()) -> None:
    """Write the top layer of ``image`` into its backing and keep the layer (``-d``);
    ``objects``: ``--object`` arguments the image needs (TLS credentials)."""
    run("commit", *objects, "-d", image)


def resize(image: str, size: int | str, fmt: str = "raw") -> None:
    run("resize", "-q", "-f", fmt, image, str(size))


def map(image: Sequence[str]) -> list[dict[str, Any]]:  # noqa: A001 - qemu-img's own word
    """The image's extents (``start``, ``length``, ``data``, ``zero``, ``present``, ...)."""
    out = _json("map", run("map", "--output=json", *image).stdout)
    return list(out)


def measure(size: int, fmt: str = "qcow2", options: dict[str, str] | None = None) -> dict[str, Any]:
    opts = ["-o", ",".join(f"{k}={v}" for k, v in options.items())] if options else []
    out: dict[str, Any] = _json(
        "measure", run("measure", "--output=json", "-O", fmt, *opts, "--size", str(size)).stdout
    )
    return out
