"""Conversion between a vvol's snapshots (COW) and a qcow2 chain (redo).

``cow_to_redo``: each point of a vvol, its snapshots oldest first and then its
current state, becomes one qcow2 layer holding only the 64 KiB chunks that
changed since the point before (the control plane's chunk bitmaps; on a
reflink filesystem found from shared extents without reading data)::

    vvol d, snapshots d@s1 < d@s2        DIR/
      d@s1  bitmap(d@s1)             ->  01-s1.qcow2        allocated chunks
      d@s2  bitmap(d@s2, base=d@s1)  ->  02-s2.qcow2        backing 01-s1.qcow2
      d     bitmap(d, base=d@s2)     ->  03-current.qcow2   backing 02-s2.qcow2

A chunk that became zeros (or a hole) is a qcow2 zero cluster, so it does not
show the backing's old data.

``redo_to_cow``: the reverse.  The bottom layer becomes a new vvol; for each
layer above it the vvol is snapshotted (named after the point just finished)
and the layer's own clusters, read with its backing disabled, are replayed
onto it: data copied from the layer file, zero clusters punched::

    01-s1.qcow2 -> create N, write its data    snapshot N@s1
    02-s2.qcow2 -> replay its clusters onto N  snapshot N@s2
    03-current  -> replay its clusters onto N  (N's current state)

Both run from any machine and on any array: a vvol's data moves through the
control plane's API (``vvol read``/``write`` of its data, in windows), or, on
the machine whose ``dir`` array holds it, straight from its file (the fast
way).  They leave nothing behind when they fail: no layer file, no directory
they made, no vvol or snapshot they created.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from . import fsutil, qcow2
from .client import Client
from .errors import Busy, InUse, InvalidInput, NotFound, VvhostError
from .tools import qemuimg

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

CHUNK = 64 << 10
MIB = 1 << 20
WINDOW = 4 << 20  # bytes read per step
API_WINDOW = 1 << 20  # bytes one write through the API carries (its body limit)
READAHEAD = 64 << 20  # bytes of reads announced ahead of the one running
SECTOR = 512
_ZERO = bytes(CHUNK)
_ZERO_WINDOW = bytes(WINDOW)
_LABEL_BAD = re.compile(r"[^A-Za-z0-9._+-]+")
_NAME_MAX = 128


# -- errors ----------------------------------------------------------------------------------
class DirNotEmpty(InvalidInput):
    template = "{path} is not empty: the chain is written into a new or empty directory"


class NotAnImage(InvalidInput):
    template = "{path} is not a disk image: {detail}"


class Unsupported(InvalidInput):
    template = "{path}: {feature} is not supported; {hint}"


class PointDiffers(VvhostError):
    code = "verify-failed"
    template = "verify: point {point} ({file}) differs from vvol {ref!r}: {detail}"


class ToolFailed(VvhostError):
    code = "tool-failed"
    template = "{tool} failed (exit {rc}): {detail}"


# -- results ---------------------------------------------------------------------------------
@dataclass
class Layer:
    """One qcow2 layer of a chain written by ``cow_to_redo``."""

    file: str  # path of the layer
    point: str  # label of the point, from the snapshot name ("current" on top)
    vvol: str  # id of the vvol (snapshot or base) it holds
    snapshot: str | None  # the snapshot's name; None for the current state
    size: int  # virtual size
    changed_bytes: int  # bytes in the chunks the bitmap reported
    data_bytes: int  # bytes stored as data clusters
    zero_bytes: int  # bytes stored as zero clusters
    bytes_written: int  # bytes written to the file (data + metadata)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Point:
    vvol: str
    name: str | None
    label: str
    path: str | None  # the data file, when this machine can read it; else the API
    size: int


@dataclass
class _Extent:
    start: int
    length: int
    zero: bool
    host: int = 0  # offset of the data in the layer file


@dataclass
class _ChainLayer:
    path: str
    format: str
    size: int
    label: str
    extents: list[_Extent] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        return sum(e.length for e in self.extents if not e.zero)


# -- names -----------------------------------------------------------------------------------
def sanitize(text: str, fallback: str) -> str:
    """A label usable in a file name and a vvol name: letters, digits and ``._+-``,
    starting with a letter or digit."""
    label = _LABEL_BAD.sub("_", text).lstrip("._+-")[:64]
    return label or fallback


def point_label(snapshot_name: str | None, base_name: str | None, vvol_id: str) -> str:
    """``d@s1`` of base ``d`` -> ``s1``; an unnamed snapshot -> ``snap-<id prefix>``."""
    fallback = f"snap-{vvol_id[:8]}"
    if not snapshot_name:
        return fallback
    if base_name and snapshot_name.startswith(base_name + "@"):
        snapshot_name = snapshot_name[len(base_name) + 1 :]
    return sanitize(snapshot_name, fallback)


def label_from_file(path: str, fallback: str) -> str:
    """``/x/02-s2.qcow2`` -> ``s2``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return sanitize(re.sub(r"^\d+-", "", stem), fallback)


def layer_file_name(index: int, count: int, label: str) -> str:
    return f"{index:0{max(2, len(str(count)))}d}-{label}.qcow2"


def snapshot_name(owner: str, label: str) -> str:
    return f"{owner}@{label[: _NAME_MAX - len(owner) - 1]}"


# -- qemu-img --------------------------------------------------------------------------------
def _compare(layer: str, raw: str) -> str | None:
    """None when the qcow2 ``layer`` (through its chain) reads like the raw file."""
    return qemuimg.compare(layer, raw, "qcow2", "raw")


def _compare_point(client: Client, layer: str, point: _Point, scratch_dir: str) -> str | None:
    """``_compare`` with the point's data; a point read through the API is first
    fetched (its allocated chunks) into a sparse scratch file beside the chain."""
    if point.path is not None:
        return _compare(layer, point.path)
    scratch = os.path.join(scratch_dir, f".verify-{point.vvol}.raw")
    try:
        with open(scratch, "wb") as fh:
            fh.truncate(point.size)
            ranges = client.vvol_bitmap(point.vvol, chunk="64K")["ranges"]
            for pos, n in _windows([(int(o), int(n)) for o, n in ranges], point.size):
                os.pwrite(fh.fileno(), client.vvol_read(point.vvol, pos, n), pos)
        return _compare(layer, scratch)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)


def image_chain(top: str) -> list[dict[str, Any]]:
    """``qemu-img info --backing-chain`` of ``top``, bottom layer first."""
    if not os.path.exists(top):
        raise NotFound(kind="image", ref=top)
    try:
        chain = qemuimg.info(top, backing_chain=True)
    except qemuimg.QemuImgFailed as exc:
        raise NotAnImage(path=top, detail=exc.fields["detail"]) from None
    if isinstance(chain, dict):
        chain = [chain]
    return list(reversed(chain))


def _layer_extents(path: str, fmt: str) -> list[_Extent]:
    """The clusters ``path`` itself holds (its backing disabled)."""
    if fmt == "raw":
        args = ["-f", "raw", path]
    else:
        spec = {"driver": fmt, "file": {"driver": "file", "filename": path}, "backing": None}
        args = ["json:" + json.dumps(spec)]
    try:
        entries = qemuimg.map(args)
    except qemuimg.QemuImgFailed as exc:
        raise NotAnImage(path=path, detail=exc.fields["detail"]) from None
    extents: list[_Extent] = []
    for entry in entries:
        if "present" not in entry:
            raise ToolFailed(tool="qemu-img map", rc=0, detail="no 'present' field (too old)")
        if not entry["present"]:
            continue
        start, length = int(entry["start"]), int(entry["length"])
        if entry["zero"]:
            extents.append(_Extent(start, length, zero=True))
        elif entry["data"] and "offset" in entry:
            extents.append(_Extent(start, length, zero=False, host=int(entry["offset"])))
        else:
            raise Unsupported(
                path=path,
                feature=f"a compressed cluster (guest offset {start})",
                hint="uncompress the layer first (qemu-img convert -O qcow2 without -c)",
            )
    return extents


def _check_layer(info: dict[str, Any]) -> tuple[str, str, int]:
    path, fmt = str(info.get("filename", "")), str(info.get("format", ""))
    if not os.path.isfile(path):
        raise Unsupported(
            path=path, feature="a layer that is not a local file", hint="copy it here"
        )
    if fmt not in ("qcow2", "raw"):
        raise Unsupported(
            path=path, feature=f"format {fmt!r}", hint="use qcow2 (or raw at the bottom)"
        )
    if info.get("encrypted"):
        raise Unsupported(path=path, feature="encryption", hint="decrypt it first")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise Unsupported(
            path=path, feature="an external data file", hint="convert to a plain qcow2 first"
        )
    if fmt == "raw" and os.path.getsize(path) % SECTOR:
        raise NotAnImage(path=path, detail=f"a raw image is whole {SECTOR}-byte sectors")
    return path, fmt, int(info["virtual-size"])


def read_chain(top: str) -> list[_ChainLayer]:
    """Check every layer of ``top``'s chain and map its own clusters, bottom first."""
    layers: list[_ChainLayer] = []
    seen: set[str] = set()
    for index, info in enumerate(image_chain(os.path.abspath(top))):
        path, fmt, size = _check_layer(info)
        label = label_from_file(path, f"layer{index + 1}")
        while label in seen:
            label += "-2"
        seen.add(label)
        layers.append(_ChainLayer(path, fmt, size, label, _layer_extents(path, fmt)))
    return layers


# -- helpers ---------------------------------------------------------------------------------
class _Ticker:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, 0, progress

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)


def _round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


# -- cow -> redo -----------------------------------------------------------------------------
def _points(client: Client, ref: str) -> list[_Point]:
    base = client.vvol(ref)
    shown = base["name"] or base["id"]
    if base["relation"] == "snapshot":
        raise InvalidInput(detail=f"{ref!r} is a snapshot: convert its base vvol {base['parent']}")
    if base["state"] != "ready":
        raise Busy(ref=shown, state=base["state"], op=base["op"])
    bound = client.bindings(vvol=base["id"])
    if bound:
        hosts = ", ".join(sorted({str(b["host"]) for b in bound}))
        raise InUse(kind="vvol", ref=shown, reason=f"bound to {hosts}; unbind it first")
    snaps = sorted(
        (client.vvol(s) for s in base["snapshots"]), key=lambda v: (v["created"], v["id"])
    )
    points = [
        _Point(
            s["id"],
            s["name"],
            point_label(s["name"], base["name"], s["id"]),
            _local(s, os.R_OK),
            s["size"],
        )
        for s in snaps
    ]
    points.append(_Point(base["id"], None, "current", _local(base, os.R_OK), base["size"]))
    return points


def _local(vvol: dict[str, Any], mode: int) -> str | None:
    """The vvol's data file when this machine can open it so (the fast way, on the
    array's own machine); None: its data goes through the control plane's API."""
    path = vvol.get("path")
    return path if path and os.access(path, mode) else None


def _prepare_dir(path: str) -> bool:
    """Make sure ``path`` is an empty directory; True when this call created it."""
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise InvalidInput(detail=f"{path} exists and is not a directory")
        if os.listdir(path):
            raise DirNotEmpty(path=path)
        return False
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InvalidInput(detail=f"{parent} does not exist: cannot make {path} in it")
    os.mkdir(path)
    return True


def _is_zero(buf: bytes, pos: int) -> bool:
    piece = buf[pos : pos + CHUNK]
    return piece == _ZERO[: len(piece)]


def _store(
    w: qcow2.Writer, offset: int, buf: bytes, first: bool, fd: int | None
) -> tuple[int, int]:
    """Put a window of a point (read from ``fd`` at ``offset``) into the layer: runs
    of non-zero chunks as data, copied from ``fd`` in the kernel where it can; zero
    chunks as zero clusters (left unallocated in the bottom layer, which has no
    backing to hide).  Returns (data bytes, zero bytes)."""
    data = zero = 0
    view = memoryview(buf)
    pos = 0
    while pos < len(buf):
        is_zero = _is_zero(buf, pos)
        end = pos + CHUNK
        while end < len(buf) and _is_zero(buf, end) == is_zero:
            end += CHUNK
        end = min(end, len(buf))
        if not is_zero:
            w.write(offset + pos, view[pos:end], source=None if fd is None else (fd, offset + pos))
            data += end - pos
        elif not first:
            w.zero(offset + pos, end - pos)
            zero += end - pos
        pos = end
    return data, zero


def _windows(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The ranges (clipped to ``size``) cut into reads of at most WINDOW bytes."""
    out: list[tuple[int, int]] = []
    for offset, length in ranges:
        end = min(offset + length, size)
        out.extend((pos, min(WINDOW, end - pos)) for pos in range(offset, end, WINDOW))
    return out


def _write_layer_api(
    client: Client,
    point: _Point,
    ranges: list[tuple[int, int]],
    path: str,
    backing: str | None,
    tick: _Ticker,
) -> tuple[qcow2.Stats, int, int]:
    """``_write_layer`` for a point read through the control plane's API."""
    data = zero = 0
    with qcow2.Writer(path, point.size, backing) as w:
        for pos, n in _windows(ranges, point.size):
            buf = client.vvol_read(point.vvol, pos, n).ljust(n, b"\0")
            d, z = _store(w, pos, buf, backing is None, None)
            data, zero = data + d, zero + z
            tick(n)
    return w.stats, data, zero


def _write_layer(
    client: Client,
    point: _Point,
    ranges: list[tuple[int, int]],
    path: str,
    backing: str | None,
    tick: _Ticker,
) -> tuple[qcow2.Stats, int, int]:
    """Copy the chunks in ``ranges`` of the point into a new layer.  Reads are
    announced READAHEAD bytes ahead (``POSIX_FADV_WILLNEED``) so scattered chunks
    are fetched several at a time instead of one after the other."""
    if point.path is None:
        return _write_layer_api(client, point, ranges, path, backing, tick)
    data = zero = 0
    windows = _windows(ranges, point.size)
    with open(point.path, "rb", buffering=0) as src, qcow2.Writer(path, point.size, backing) as w:
        fd = src.fileno()
        advised = ahead = 0
        for pos, n in windows:
            ahead -= n
            while advised < len(windows) and ahead < READAHEAD:
                off, length = windows[advised]
                os.posix_fadvise(fd, off, length, os.POSIX_FADV_WILLNEED)
                advised, ahead = advised + 1, ahead + length
            buf = os.pread(fd, n, pos).ljust(n, b"\0")
            d, z = _store(w, pos, buf, backing is None, fd)
            data, zero = data + d, zero + z
            tick(n)
    return w.stats, data, zero


def cow_to_redo(
    client: Client,
    vvol_ref: str,
    out_dir: str,
    *,
    verify: bool = False,
    progress: Progress | None = None,
) -> list[Layer]:
    """Write the points of ``vvol_ref`` (snapshots oldest first, then its current
    state) as a qcow2 chain in ``out_dir``; return the layers, bottom first.
    With ``verify`` each layer, read through its chain, is compared with its vvol."""
    out_dir = os.path.abspath(out_dir)
    points = _points(client, vvol_ref)
    plans: list[list[tuple[int, int]]] = []
    for prev, point in zip([None, *points], points, strict=False):
        bitmap = client.vvol_bitmap(point.vvol, base=prev.vvol if prev else None, chunk="64K")
        plans.append([(int(o), int(n)) for o, n in bitmap["ranges"]])
    tick = _Ticker(sum(n for plan in plans for _, n in plan), progress)
    created = _prepare_dir(out_dir)
    written: list[str] = []
    try:
        layers: list[Layer] = []
        backing: str | None = None
        for index, (point, plan) in enumerate(zip(points, plans, strict=True), start=1):
            name = layer_file_name(index, len(points), point.label)
            path = os.path.join(out_dir, name)
            written.append(path)
            stats, data, zero = _write_layer(client, point, plan, path, backing, tick)
            layers.append(
                Layer(
                    file=path,
                    point=point.label,
                    vvol=point.vvol,
                    snapshot=point.name,
                    size=point.size,
                    changed_bytes=sum(n for _, n in plan),
                    data_bytes=data,
                    zero_bytes=zero,
                    bytes_written=stats.bytes_written,
                )
            )
            backing = name
        if verify:
            for layer, point in zip(layers, points, strict=True):
                detail = _compare_point(client, layer.file, point, out_dir)
                if detail is not None:
                    raise PointDiffers(
                        point=layer.point,
                        file=os.path.basename(layer.file),
                        ref=layer.snapshot or layer.vvol,
                        detail=detail,
                    )
        return layers
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if created:
            os.rmdir(out_dir)
        raise


# -- redo -> cow -----------------------------------------------------------------------------
def _replay(
    client: Client,
    layer: _ChainLayer,
    base: dict[str, Any],
    dst: str | None,
    first: bool,
    tick: _Ticker,
) -> None:
    """Replay ``layer`` onto the vvol: into its file where this machine can write
    it, else through the control plane's API."""
    if dst is not None:
        _apply(layer, dst, first, tick)
        return
    size = client.vvol(base["id"])["size"]
    with open(layer.path, "rb", buffering=0) as s:
        if first:
            for pos, buf, n in _packed(layer, s.fileno()):
                if buf != _ZERO_WINDOW[: len(buf)]:
                    client.vvol_write(base["id"], pos, buf)
                tick(n)
            return
        for e in layer.extents:
            if e.zero:
                if not first:
                    client.vvol_write(base["id"], e.start, b"", zero=e.length)
                continue
            for pos in range(0, e.length, API_WINDOW):
                n = min(API_WINDOW, e.length - pos)
                buf = os.pread(s.fileno(), n, e.host + pos).ljust(n, b"\0")
                if not (first and buf == _ZERO_WINDOW[:n]):
                    client.vvol_write(base["id"], e.start + pos, buf)
                tick(n)
    if not first and layer.size < size:  # a layer smaller than the vvol: nothing past it
        client.vvol_write(base["id"], layer.size, b"", zero=size - layer.size)


def _packed(layer: _ChainLayer, fd: int) -> Iterator[tuple[int, bytes, int]]:
    """The data of the bottom layer (a fresh vvol reads zeros everywhere else) in
    as few writes through the API as its window allows: small extents close to
    each other go in one write, the gaps between them zeros::

        extents   [a]  [b]    [c]          ...  [z]
        writes    [a00b0000c]  (<= API_WINDOW)  [z]

    Yields (offset, bytes, data bytes of the layer in it)."""
    pieces = [
        (e.start + pos, e.host + pos, min(API_WINDOW, e.length - pos))
        for e in layer.extents
        if not e.zero
        for pos in range(0, e.length, API_WINDOW)
    ]
    i = 0
    while i < len(pieces):
        start, j = pieces[i][0], i
        while j < len(pieces) and pieces[j][0] + pieces[j][2] - start <= API_WINDOW:
            j += 1
        buf = bytearray(pieces[j - 1][0] + pieces[j - 1][2] - start)
        for guest, host, n in pieces[i:j]:
            data = os.pread(fd, n, host)
            buf[guest - start : guest - start + len(data)] = data
        yield start, bytes(buf), sum(n for _g, _h, n in pieces[i:j])
        i = j


def _apply(layer: _ChainLayer, dst: str, first: bool, tick: _Ticker) -> None:
    """Replay ``layer``'s own clusters onto the raw file ``dst``."""
    zeros: list[tuple[int, int]] = []
    with open(layer.path, "rb", buffering=0) as s, open(dst, "r+b", buffering=0) as d:
        for e in layer.extents:
            if e.zero:
                if not first:
                    zeros.append((e.start, e.length))
                continue
            for pos in range(0, e.length, WINDOW):
                n = min(WINDOW, e.length - pos)
                buf = os.pread(s.fileno(), n, e.host + pos).ljust(n, b"\0")
                if not (first and buf == _ZERO_WINDOW[:n]):  # a new vvol reads zeros already
                    os.pwrite(d.fileno(), buf, e.start + pos)
                tick(n)
        size = os.fstat(d.fileno()).st_size
        os.fsync(d.fileno())
    if not first and layer.size < size:  # a layer smaller than the vvol: nothing past it
        zeros.append((layer.size, size - layer.size))
    if zeros:
        # /dev/null has data nowhere: write_ranges makes every range zeros (punched)
        fsutil.write_ranges(os.devnull, dst, zeros)


def redo_to_cow(
    client: Client,
    top: str,
    *,
    container: str | None = None,
    datastore: str | None = None,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    progress: Progress | None = None,
    pe: str | None = None,
) -> dict[str, Any]:
    """Turn the chain of ``top`` into a new vvol (in ``container`` or ``datastore``,
    on an array endpoint ``pe`` serves if given) whose snapshots, oldest first, are
    the lower points and whose current state is ``top``.
    Returns ``{"vvol": base, "snapshots": [...], "layers": [...]}``."""
    if container is None and datastore is None:
        raise InvalidInput(detail="say where: a container or a datastore")
    chain = read_chain(top)
    tick = _Ticker(sum(layer.data_bytes for layer in chain), progress)
    base: dict[str, Any] | None = None
    try:
        size = _round_up(chain[0].size, MIB)
        base = client.vvol_create(
            container, size, name=name, metadata=metadata, datastore=datastore, pe=pe
        )
        dst = _local(base, os.W_OK)
        _replay(client, chain[0], base, dst, True, tick)
        snaps: list[str] = []
        for below, layer in itertools.pairwise(chain):
            snap = client.vvol_snapshot(base["id"], snapshot_name(name or base["id"], below.label))
            snaps.append(snap["id"])
            if _round_up(layer.size, MIB) > size:
                size = _round_up(layer.size, MIB)
                client.vvol_extend(base["id"], size)
            _replay(client, layer, base, dst, False, tick)
        return {
            "vvol": client.vvol(base["id"]),
            "snapshots": [client.vvol(s) for s in snaps],
            "layers": [
                {"file": c.path, "format": c.format, "point": c.label, "data_bytes": c.data_bytes}
                for c in chain
            ],
        }
    except BaseException:
        if base is not None:
            with contextlib.suppress(VvhostError):  # the first error is the one to report
                _remove_vvol(client, base["id"])
        raise


def _remove_vvol(client: Client, vvol_id: str) -> None:
    """Delete a vvol this module created, its snapshots first (newest first)."""
    try:
        snapshots = client.vvol(vvol_id)["snapshots"]
    except NotFound:
        return
    for sid in reversed(snapshots):
        client.vvol_delete(sid)
    client.vvol_delete(vvol_id)
